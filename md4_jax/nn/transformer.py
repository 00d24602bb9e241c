"""Bidirectional text transformer of MD4 (md4.md §4.1; md4 `networks/transformer.py`).

LLaMA-style blocks: RoPE on q, k, no qkv bias, gated MLP, adaLN-Zero time conditioning (or RMSNorm
pre-norm without conditioning), a zero-initialised bias-free output head, so the initial
log-probabilities are uniform, -log V. Input ids are in [0, V] (V = mask id, V + 1 embedding rows);
the output has V logits (no mask channel, md4.md §2.6).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from md4_jax.nn import axes
from md4_jax.nn import blocks
from md4_jax.nn import checks
from md4_jax.nn import embeddings
from md4_jax.nn import layers

TRANSFORMER_SIZES = {
    "micro": dict(num_layers=1, num_heads=2, width=32),  # D-CBG classifiers (evaluated L x V times per step)
    "tiny": dict(num_layers=4, num_heads=4, width=128),
    "small": dict(num_layers=12, num_heads=12, width=768),    # MD4-S
    "medium": dict(num_layers=24, num_heads=16, width=1024),  # MD4-M
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Transformer sizes; the conditioning width is width // num_heads (md4 feature_dim)."""
  vocab_size: int  # V data tokens; the mask id is V
  num_layers: int
  num_heads: int
  width: int  # d = num_heads * head_dim
  mlp_type: str = "glu"  # 'glu' (sigmoid gate, md4) | 'swiglu' | 'geglu'
  dropout: float = 0.0  # channel-wise residual dropout, shared over the sequence
  time_conditioning: bool = True  # adaLN-Zero on t; False and num_classes=0 -> RMSNorm pre-norm
  num_classes: int = 0  # 0 = unconditional; else a label embedding joins the conditioning
  outside_embed: bool = False  # md4 text8: embed V+1 ids to head_dim, then Dense(width)
  causal: bool = False
  dtype: str = "float32"  # compute dtype; parameters are always float32
  remat: bool = False  # jax.checkpoint around each block
  scan_layers: bool = False  # stacked block parameters, run by jax.lax.scan: one block to compile
  rope_theta: float = 1e4
  attention: str = "auto"  # 'auto' (cuDNN on GPU for bf16) | 'xla' | 'cudnn'
  num_outputs: int = 0  # head width; 0 = vocab_size (a noisy property classifier: its number of classes)

  def __post_init__(self):
    checks.check_positive(vocab_size=self.vocab_size, num_layers=self.num_layers,
                          num_heads=self.num_heads, width=self.width)
    checks.check_heads(self.width, self.num_heads)
    checks.check_choice("mlp_type", self.mlp_type, tuple(blocks.MLP_ACTIVATIONS))
    checks.check_network(self)
    if self.num_outputs < 0:
      raise ValueError(f"num_outputs must be >= 0 (0 = vocab_size); got {self.num_outputs}")
    if self.rope_theta <= 0:
      raise ValueError(f"rope_theta must be > 0; got {self.rope_theta}")

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def cond_dim(self) -> int:
    """Width of the conditioning vector; 0 when the network has no conditioning at all."""
    return self.head_dim if (self.time_conditioning or self.num_classes) else 0


class Transformer(nnx.Module):
  """(z_t [B, L] int, t [B], cond [B] | None) -> logits [B, L, V] float32."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    c, dtype = config, checks.DTYPES[config.dtype]
    embed_dim = c.head_dim if c.outside_embed else c.width
    self.embed = layers.embed(c.vocab_size + 1, embed_dim, (axes.VOCAB, axes.EMBED), rngs=rngs)
    self.embed_proj = (layers.dense(embed_dim, c.width, (None, axes.EMBED), dtype=dtype, rngs=rngs)
                       if c.outside_embed else None)
    self.cond_embed = (
        embeddings.CondEmbedding(c.cond_dim, time_conditioning=c.time_conditioning,
                                 num_classes=c.num_classes, rngs=rngs)
        if c.cond_dim else None)
    self.blocks = blocks.make_stack(
        lambda rngs: blocks.TransformerBlock(
            c.width, c.num_heads, cond_dim=c.cond_dim, mlp_type=c.mlp_type, dropout=c.dropout,
            causal=c.causal, mlp_init_scale=2.0 / c.num_layers, dtype=dtype,
            attention=c.attention, rngs=rngs),
        c.num_layers, scan=c.scan_layers, rngs=rngs)
    self.final = blocks.FinalLayer(c.width, c.num_outputs or c.vocab_size, cond_dim=c.cond_dim,
                                   out_name=axes.VOCAB, dtype=dtype, rngs=rngs)

  def __call__(self, z_t: jax.Array, t: jax.Array, cond: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits [B, L, V]; dropout only when `rngs` is given (`head_features` + `head`: the head at chosen positions).

    Args:
      z_t: int [B, L], ids in [0, V] (V = mask).
      t: float [B] in [0, 1]; ignored without time conditioning.
      cond: int [B] class labels or None (None = the null label when num_classes > 0).
      rngs: nnx.Rngs with a 'dropout' stream, or None for deterministic evaluation.
    """
    h, cond_vec = self._trunk(z_t, t, cond, rngs)
    return self.final(h, cond_vec)  # [B, L, V] float32

  def head_features(self, z_t: jax.Array, t: jax.Array, cond: jax.Array | None = None) -> jax.Array:
    """What the head reads at each position, [B, L, D + C] float32: the residual stream and the conditioning
    vector (C = 0 without conditioning); `head(features)` gives __call__'s logits (deterministic)."""
    h, cond_vec = self._trunk(z_t, t, cond, None)
    if cond_vec is None:
      return h
    return jnp.concatenate([h, jnp.broadcast_to(cond_vec[:, None, :], h.shape[:2] + cond_vec.shape[-1:])], -1)

  def head(self, features: jax.Array) -> jax.Array:
    """Logits [K, V] of features [K, D + C] (`head_features` rows gathered at K positions)."""
    h, cond_vec = features[:, :self.config.width], features[:, self.config.width:]
    return self.final(h[:, None, :], cond_vec if cond_vec.shape[-1] else None)[:, 0]

  def hidden_states(self, z_t: jax.Array, t: jax.Array, cond: jax.Array | None = None, *,
                    rngs: nnx.Rngs | None = None) -> jax.Array:
    """The residual stream after the last block, [B, L, D] float32: what the final norm and head read.

    Features of a sequence (MAUVE's featuriser, quality.py); arguments as in __call__.
    """
    return self._trunk(z_t, t, cond, rngs)[0]

  def _trunk(self, z_t, t, cond, rngs) -> tuple[jax.Array, jax.Array | None]:
    """(h [B, L, D] float32 after the blocks, the conditioning vector [B, C] or None)."""
    c = self.config
    if z_t.ndim != 2:
      raise ValueError(f"z_t must have shape [B, L]; got {z_t.shape}")
    if t.shape != z_t.shape[:1]:
      raise ValueError(f"t must have shape [B] = {z_t.shape[:1]}; got {t.shape}")
    if self.cond_embed is None and cond is not None:
      raise ValueError("cond was given but the network has num_classes=0")
    key = rngs.dropout() if (rngs is not None and c.dropout > 0) else None
    key_embed, *block_keys = layers.split_key(key, c.num_layers + 1)

    h = self.embed(z_t)  # [B, L, E]
    if self.embed_proj is not None:
      h = self.embed_proj(h)
    h = layers.dropout(h.astype(jnp.float32), c.dropout, key_embed, (1,))  # [B, L, D] f32
    cond_vec = self.cond_embed(t, cond) if self.cond_embed is not None else None  # [B, C]
    rope = embeddings.rope_tables(z_t.shape[1], c.head_dim, c.rope_theta)
    h = blocks.apply_stack(self.blocks, h, cond_vec, rope, block_keys, use_remat=c.remat)
    return h, cond_vec
