"""MDLM's DiT ("DDiT"), the network of the public MDLM / ReMDM / DUO text checkpoints (mdlm_dit.md).

Blocks: LayerNorm with a scale and no bias, fused bias-free qkv, rotate-half rotary embeddings on q and k,
bidirectional attention, GELU-tanh MLP with biases, adaLN-Zero with 6 chunks (shift, scale, gate for attention, then
for the MLP) from the conditioning vector c = silu(Linear(silu(Linear(features(sigma))))), 256 sinusoidal features
(cos first) of the noise level sigma. Final layer: adaLN (2 chunks) around a scaled LayerNorm and an untied Linear
with bias to V + 1 logits (the mask is the last). Dropout is element-wise on the attention and MLP outputs.

SUBS (MDLM §3.2): the mask logit is dropped (= -inf before the softmax), and at unmasked positions the output is
the carried-over token, logit 0 there and -1e6 elsewhere (as MDLM's `neg_infinity`), so the log-probabilities
over the V data tokens are MDLM's exactly.

Time: without time conditioning (MDLM's OWT checkpoint) sigma is 0 whatever t; with it, sigma = -log(1 - (1 -
1e-3) t), MDLM's log-linear noise level at our time t.
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

MDLM_DIT_SIZES = {
    "tiny": dict(num_layers=1, num_heads=2, width=32, cond_dim=32),
    "reduced": dict(num_layers=2, num_heads=2, width=128, cond_dim=128),  # ReMDM's reduced test net (13.6M)
    "small": dict(num_layers=12, num_heads=12, width=768, cond_dim=128),  # mdlm-owt (169.6M)
}
NOISE_FEATURES = 256  # TimestepEmbedder frequency_embedding_size
NOISE_EPS = 1e-3      # MDLM LogLinearNoise eps: sigma(t) = -log(1 - (1 - eps) t)
NEG_INF = -1e6        # MDLM `neg_infinity` of the SUBS carry-over
ROPE_THETA = 1e4


@dataclasses.dataclass(frozen=True)
class MDLMDiTConfig:
  """Sizes of the DiT; the model has V + 1 input and output rows (mask id V)."""
  vocab_size: int  # V data tokens (GPT-2: 50257); the checkpoint's vocab_size is V + 1
  num_layers: int
  num_heads: int
  width: int
  cond_dim: int = 128
  mlp_ratio: int = 4
  dropout: float = 0.0
  time_conditioning: bool = False
  num_classes: int = 0  # must be 0: MDLM's DiT has no label input
  dtype: str = "float32"  # compute dtype of the blocks' matmuls; parameters, norms, logits stay float32
  remat: bool = False
  scan_layers: bool = False
  attention: str = "auto"

  def __post_init__(self):
    checks.check_positive(vocab_size=self.vocab_size, num_layers=self.num_layers, num_heads=self.num_heads,
                          width=self.width, cond_dim=self.cond_dim, mlp_ratio=self.mlp_ratio)
    checks.check_heads(self.width, self.num_heads)
    if self.num_classes:
      raise ValueError(f"model.kind='mdlm_dit' has no label input; got num_classes={self.num_classes} (use "
                       "model.kind='transformer' for class-conditional data)")
    checks.check_network(self)

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


class MDLMBlock(nnx.Module):
  """DDiTBlock: x [B, L, D] float32, c [B, C] -> [B, L, D] float32."""

  def __init__(self, config: MDLMDiTConfig, *, rngs: nnx.Rngs):
    c, dtype = config, checks.DTYPES[config.dtype]
    d, hidden = c.width, c.mlp_ratio * c.width
    self.num_heads, self.dropout, self.attention = c.num_heads, c.dropout, c.attention
    self.norm1 = layers.scaled_layer_norm(d, rngs=rngs)
    self.attn_qkv = layers.dense(d, 3 * d, (axes.EMBED, axes.HEADS), use_bias=False, dtype=dtype, rngs=rngs)
    self.attn_out = layers.dense(d, d, (axes.HEADS, axes.EMBED), use_bias=False, dtype=dtype, rngs=rngs)
    self.norm2 = layers.scaled_layer_norm(d, rngs=rngs)
    self.mlp_in = layers.dense(d, hidden, (axes.EMBED, axes.MLP), dtype=dtype, rngs=rngs)
    self.mlp_out = layers.dense(hidden, d, (axes.MLP, axes.EMBED), dtype=dtype, rngs=rngs)
    self.modulation = layers.adaln_modulation(c.cond_dim, d, 6, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, c: jax.Array, rope: blocks.Rope, key: jax.Array | None) -> jax.Array:
    b, length, d = x.shape
    key_attention, key_mlp = layers.split_key(key, 2)
    mods = jnp.split(self.modulation(c)[:, None, :].astype(jnp.float32), 6, axis=-1)  # 6 x [B, 1, D]
    shift_att, scale_att, gate_att, shift_mlp, scale_mlp, gate_mlp = mods
    qkv = self.attn_qkv(layers.modulate(self.norm1(x), shift_att, scale_att))
    qkv = qkv.reshape(b, length, 3, self.num_heads, d // self.num_heads)  # (three, head, dim) order
    q, k = (embeddings.apply_rope_half(qkv[:, :, i], *rope) for i in (0, 1))
    implementation = blocks.attention_implementation(self.attention, q.dtype, q.shape[-1])
    a = jax.nn.dot_product_attention(q, k, qkv[:, :, 2], implementation=implementation)  # [B, L, H, Dh]
    a = self.attn_out(a.reshape(b, length, d)).astype(jnp.float32)
    h = x + gate_att * layers.dropout(a, self.dropout, key_attention)
    m = self.mlp_in(layers.modulate(self.norm2(h), shift_mlp, scale_mlp))
    m = self.mlp_out(jax.nn.gelu(m, approximate=True)).astype(jnp.float32)
    return h + gate_mlp * layers.dropout(m, self.dropout, key_mlp)


class MDLMDiT(nnx.Module):
  """(z_t [B, L] int, t [B], cond None) -> SUBS logits [B, L, V] float32 (see the module docstring)."""

  def __init__(self, config: MDLMDiTConfig, *, rngs: nnx.Rngs):
    self.config = config
    c = config
    self.vocab_embed = layers.embed(c.vocab_size + 1, c.width, (axes.VOCAB, axes.EMBED), rngs=rngs)
    self.sigma_map1 = layers.dense(NOISE_FEATURES, c.cond_dim, (None, axes.COND), rngs=rngs)
    self.sigma_map2 = layers.dense(c.cond_dim, c.cond_dim, (None, axes.COND), rngs=rngs)
    self.blocks = blocks.make_stack(lambda rngs: MDLMBlock(c, rngs=rngs), c.num_layers, scan=c.scan_layers,
                                    rngs=rngs)
    self.final_norm = layers.scaled_layer_norm(c.width, rngs=rngs)
    self.final_modulation = layers.adaln_modulation(c.cond_dim, c.width, 2, rngs=rngs)
    self.head_linear = layers.dense(c.width, c.vocab_size + 1, (axes.EMBED, axes.VOCAB), zero=True,
                                    dtype=checks.DTYPES[c.dtype], out_dtype=jnp.float32, rngs=rngs)

  def __call__(self, z_t: jax.Array, t: jax.Array, cond: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """SUBS logits [B, L, V]; dropout only when `rngs` (with a 'dropout' stream) is given."""
    h, c = self._trunk(z_t, t, cond, rngs)
    logits = self._logits(h, c)  # [B, L, V]
    carry = jnp.where(jnp.arange(self.config.vocab_size) == z_t[..., None], 0.0, NEG_INF)
    return jnp.where((z_t != self.config.vocab_size)[..., None], carry, logits)

  def head_features(self, z_t: jax.Array, t: jax.Array, cond: jax.Array | None = None) -> jax.Array:
    """[B, L, D + C] float32: the residual stream and c, what `head` reads (deterministic; masked positions)."""
    h, c = self._trunk(z_t, t, cond, None)
    return jnp.concatenate([h, jnp.broadcast_to(c[:, None, :], h.shape[:2] + c.shape[-1:])], axis=-1)

  def head(self, features: jax.Array) -> jax.Array:
    """Logits [K, V] (mask dropped, no carry-over) of `head_features` rows [K, D + C]."""
    d = self.config.width
    return self._logits(features[:, None, :d], features[:, d:])[:, 0]

  def _logits(self, h: jax.Array, c: jax.Array) -> jax.Array:
    """Final layer: h [B, L, D], c [B, C] -> logits [B, L, V] over the data tokens (the mask column dropped)."""
    shift, scale = jnp.split(self.final_modulation(c)[:, None, :], 2, axis=-1)
    return self.head_linear(layers.modulate(self.final_norm(h), shift, scale))[..., :self.config.vocab_size]

  def _trunk(self, z_t, t, cond, rngs) -> tuple[jax.Array, jax.Array]:
    """(h [B, L, D] float32 after the blocks, c [B, C] float32)."""
    c = self.config
    if z_t.ndim != 2:
      raise ValueError(f"z_t must have shape [B, L]; got {z_t.shape}")
    if t.shape != z_t.shape[:1]:
      raise ValueError(f"t must have shape [B] = {z_t.shape[:1]}; got {t.shape}")
    if cond is not None:
      raise ValueError("cond was given but model.kind='mdlm_dit' has no label input")
    key = rngs.dropout() if (rngs is not None and c.dropout > 0) else None
    sigma = (-jnp.log1p(-(1.0 - NOISE_EPS) * t.astype(jnp.float32)) if c.time_conditioning
             else jnp.zeros(t.shape, jnp.float32))
    cond_vec = jax.nn.silu(self.sigma_map2(jax.nn.silu(self.sigma_map1(embeddings.noise_features(sigma)))))
    h = self.vocab_embed(z_t).astype(jnp.float32)  # [B, L, D]
    rope = embeddings.rope_tables(z_t.shape[1], c.head_dim, ROPE_THETA)
    h = blocks.apply_stack(self.blocks, h, cond_vec, rope, layers.split_key(key, c.num_layers), use_remat=c.remat)
    return h, cond_vec
