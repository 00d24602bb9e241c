"""Logical axis names carried by every network parameter (`nnx.with_partitioning`).

Each parameter's annotation is a tuple with one name (or None) per array dimension. The training
loop maps logical names to mesh axes; `RULES` names only axes of the ('data', 'fsdp') mesh that
sharding.make_mesh builds (no tensor parallelism): no parameter carries two names that map to the same mesh
axis, and V (or V+1) is never sharded (50257 = 29 * 1733 splits over no usual device count). The networks insert no
resharding themselves, so the mesh axes should be `jax.sharding.AxisType.Auto` (GSPMD
propagation): under Explicit axes a matmul against an fsdp-sharded kernel raises a
ShardingTypeError.
"""

from __future__ import annotations

VOCAB = "vocab"        # V data tokens (logits) or V+1 input ids (embedding rows)
EMBED = "embed"        # transformer width d (residual stream)
MLP = "mlp"            # gated-MLP hidden width
HEADS = "heads"        # num_heads * head_dim of q, k, v (and the input of the attention output)
COND = "cond"          # width of the time / label conditioning vector
CHANNELS = "channels"  # feature channels of the convolutional networks

RULES = (
    (VOCAB, None),
    (EMBED, "fsdp"),
    (MLP, None),
    (HEADS, None),
    (COND, None),
    (CHANNELS, "fsdp"),
)
