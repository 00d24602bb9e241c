"""Convolutional backbone shared by the CIFAR-10 U-Net and the ImageNet-64 U-ViT (md4.md §4.2).

Each channel value is a token: ids [0, V] (V = mask) are embedded to `feature_dim`, the C channel
embeddings of a pixel are concatenated, and the output conv gives C * V logits per pixel
(md4 `UNet5DWrapper`). The backbone is VDM-style at full resolution (no down-sampling):
conv_in, `num_layers` ResBlocks, a middle, `num_layers + 1` ResBlocks fed with skip
concatenations, GroupNorm + swish, and a zero-initialised output conv.
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvNetConfig:
  """Fields shared by `UNetConfig` and `UViTConfig`; the conditioning width is feature_dim."""
  feature_dim: int  # channels of every ResBlock (and of each channel-value embedding)
  num_layers: int  # ResBlocks on the way down; num_layers + 1 on the way up
  vocab_size: int = 256  # V values per channel; the mask id is V
  num_channels: int = 3  # C
  dropout: float = 0.1
  time_conditioning: bool = True
  num_classes: int = 0  # 0 = unconditional; else a label embedding joins the conditioning
  num_groups: int = 32  # GroupNorm groups
  dtype: str = "float32"  # compute dtype; parameters are always float32
  remat: bool = False  # jax.checkpoint around each ResBlock / transformer block
  attention: str = "auto"  # 'auto' (cuDNN on GPU for bf16) | 'xla' | 'cudnn'

  def __post_init__(self):
    checks.check_positive(feature_dim=self.feature_dim, num_layers=self.num_layers,
                          vocab_size=self.vocab_size, num_channels=self.num_channels,
                          num_groups=self.num_groups)
    checks.check_divides("feature_dim", self.feature_dim, "num_groups", self.num_groups)
    checks.check_network(self)

  @property
  def cond_dim(self) -> int:
    return self.feature_dim if (self.time_conditioning or self.num_classes) else 0


class ResBlock(nnx.Module):
  """GroupNorm-swish-conv twice with a residual (VDM `ResnetBlock`), conditioned on c.

  `scale_shift=False` (CIFAR U-Net): c enters through a zero-init Dense added after conv1.
  `scale_shift=True` (U-ViT, conditional GroupNorm): the second GroupNorm is modulated as
  norm(h) * (1 + scale) + shift with (shift, scale) from a zero-init Dense of c.
  The second conv is zero-initialised, so every block starts as the identity (plus shortcut).
  """

  def __init__(self, in_dim: int, out_dim: int, *, cond_dim: int, dropout: float,
               num_groups: int, scale_shift: bool, rngs: nnx.Rngs, dtype=jnp.float32):
    self.dropout = dropout
    self.scale_shift = scale_shift
    self.norm1 = layers.group_norm(in_dim, num_groups, rngs=rngs)
    self.conv1 = layers.conv3x3(in_dim, out_dim, dtype=dtype, rngs=rngs)
    self.cond_proj = (
        layers.dense(cond_dim, (2 if scale_shift else 1) * out_dim, (axes.COND, axes.CHANNELS),
                     use_bias=False, zero=True, dtype=dtype, out_dtype=jnp.float32, rngs=rngs)
        if cond_dim else None)
    self.norm2 = layers.group_norm(out_dim, num_groups, rngs=rngs)
    self.conv2 = layers.conv3x3(out_dim, out_dim, zero=True, dtype=dtype, rngs=rngs)
    self.shortcut = (layers.dense(in_dim, out_dim, (None, axes.CHANNELS), dtype=dtype, rngs=rngs)
                     if in_dim != out_dim else None)

  def __call__(self, x: jax.Array, c: jax.Array | None, key: jax.Array | None) -> jax.Array:
    """x [B, H, W, in_dim] float32, c [B, C] or None -> [B, H, W, out_dim] float32."""
    h = self.conv1(jax.nn.swish(self.norm1(x)))
    proj = self.cond_proj(jax.nn.swish(c))[:, None, None, :] if self.cond_proj is not None else None
    if proj is not None and not self.scale_shift:
      h = h + proj
    h = self.norm2(h.astype(jnp.float32))
    if proj is not None and self.scale_shift:
      shift, scale = jnp.split(proj, 2, axis=-1)
      h = layers.modulate(h, shift, scale)
    h = layers.dropout(jax.nn.swish(h), self.dropout, key)
    if self.shortcut is not None:
      x = self.shortcut(x)
    return x + self.conv2(h)


class SelfAttention2D(nnx.Module):
  """x + Attention(GroupNorm(x)) over the H*W positions, zero-initialised output (VDM AttnBlock)."""

  def __init__(self, dim: int, num_heads: int, *, num_groups: int, rngs: nnx.Rngs,
               dtype=jnp.float32, attention: str = "auto"):
    self.norm = layers.group_norm(dim, num_groups, rngs=rngs)
    self.attention = blocks.Attention(dim, num_heads, use_bias=True, zero_out=True, dtype=dtype,
                                      implementation=attention, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, height, width, dim = x.shape
    h = self.attention(self.norm(x).reshape(b, height * width, dim))
    return x + h.reshape(x.shape)


class ImageBackbone(nnx.Module):
  """(z_t [B, H, W, C] int, t [B], cond [B] | None) -> logits [B, H, W, C, V] float32.

  Subclasses build the `middle`: a module called as middle(h [B, H, W, F], c, key) -> same shape.
  """

  def __init__(self, config: ConvNetConfig, middle: nnx.Module, *, scale_shift: bool,
               rngs: nnx.Rngs):
    self.config = config
    c, dtype = config, checks.DTYPES[config.dtype]
    f = c.feature_dim
    self.embed = layers.embed(c.vocab_size + 1, f, (axes.VOCAB, axes.CHANNELS), rngs=rngs)
    self.cond_embed = (
        embeddings.CondEmbedding(c.cond_dim, time_conditioning=c.time_conditioning,
                                 num_classes=c.num_classes, rngs=rngs)
        if c.cond_dim else None)
    self.conv_in = layers.conv3x3(c.num_channels * f, f, dtype=dtype, rngs=rngs)
    block = dict(cond_dim=c.cond_dim, dropout=c.dropout, num_groups=c.num_groups,
                 scale_shift=scale_shift, dtype=dtype, rngs=rngs)
    self.down = nnx.List([ResBlock(f, f, **block) for _ in range(c.num_layers)])
    self.middle = middle
    self.up = nnx.List([ResBlock(2 * f, f, **block) for _ in range(c.num_layers + 1)])
    self.norm_out = layers.group_norm(f, c.num_groups, rngs=rngs)
    self.conv_out = layers.conv3x3(f, c.num_channels * c.vocab_size, zero=True, dtype=dtype,
                                   out_dtype=jnp.float32, rngs=rngs)

  def __call__(self, z_t: jax.Array, t: jax.Array, cond: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits [B, H, W, C, V]; dropout only when `rngs` (with a 'dropout' stream) is given."""
    c = self.config
    if z_t.ndim != 4 or z_t.shape[-1] != c.num_channels:
      raise ValueError(f"z_t must have shape [B, H, W, C={c.num_channels}]; got {z_t.shape}")
    if t.shape != z_t.shape[:1]:
      raise ValueError(f"t must have shape [B] = {z_t.shape[:1]}; got {t.shape}")
    if self.cond_embed is None and cond is not None:
      raise ValueError("cond was given but the network has num_classes=0")
    b, height, width, channels = z_t.shape
    key = rngs.dropout() if (rngs is not None and c.dropout > 0) else None
    key_middle, *block_keys = layers.split_key(key, 2 * c.num_layers + 2)
    cond_vec = self.cond_embed(t, cond) if self.cond_embed is not None else None  # [B, F]

    def apply_block(block, h, cond_vec, key):
      return block(h, cond_vec, key)

    if c.remat:
      apply_block = layers.remat(apply_block)
    h = self.embed(z_t).reshape(b, height, width, channels * c.feature_dim)  # [B, H, W, C*F]
    hs = [self.conv_in(h).astype(jnp.float32)]  # [B, H, W, F]
    for block, block_key in zip(self.down, block_keys[:c.num_layers]):
      hs.append(apply_block(block, hs[-1], cond_vec, block_key))
    h = self.middle(hs[-1], cond_vec, key_middle)
    for block, block_key in zip(self.up, block_keys[c.num_layers:]):
      h = apply_block(block, jnp.concatenate([h, hs.pop()], axis=-1), cond_vec, block_key)
    h = self.conv_out(jax.nn.swish(self.norm_out(h)))  # [B, H, W, C*V]
    return h.reshape(b, height, width, channels, c.vocab_size)
