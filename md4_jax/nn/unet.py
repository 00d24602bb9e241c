"""VDM-style U-Net for CIFAR-10 (md4.md §4.2; md4 `networks/unet.py`, paper App. J.4).

Full 32x32 resolution throughout: ResBlocks down, a middle ResBlock + 1-head self-attention +
ResBlock, ResBlocks up with skip concatenation; time (and label) conditioning enters every
ResBlock through a zero-initialised Dense.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from md4_jax.nn import checks
from md4_jax.nn import layers
from md4_jax.nn import resnet

UNET_SIZES = {
    "tiny": dict(feature_dim=32, num_layers=2, num_groups=8),
    "cifar10": dict(feature_dim=128, num_layers=32),  # paper: 28M parameters
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class UNetConfig(resnet.ConvNetConfig):
  """See `resnet.ConvNetConfig`; the paper's CIFAR-10 net is UNET_SIZES['cifar10'], dropout 0.1."""


class UNetMiddle(nnx.Module):
  """ResBlock -> 1-head self-attention -> ResBlock."""

  def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
    c, dtype = config, checks.DTYPES[config.dtype]
    f = c.feature_dim
    block = dict(cond_dim=c.cond_dim, dropout=c.dropout, num_groups=c.num_groups,
                 scale_shift=False, dtype=dtype, rngs=rngs)
    self.remat = c.remat
    self.block1 = resnet.ResBlock(f, f, **block)
    self.attention = resnet.SelfAttention2D(f, 1, num_groups=c.num_groups, dtype=dtype,
                                            attention=c.attention, rngs=rngs)
    self.block2 = resnet.ResBlock(f, f, **block)

  def __call__(self, h: jax.Array, c: jax.Array | None, key: jax.Array | None) -> jax.Array:
    """h [B, H, W, F] -> [B, H, W, F]."""
    key1, key2 = layers.split_key(key, 2)

    def middle(module, h, c, key1, key2):
      return module.block2(module.attention(module.block1(h, c, key1)), c, key2)

    return (layers.remat(middle) if self.remat else middle)(self, h, c, key1, key2)


class UNet(resnet.ImageBackbone):
  """(z_t [B, H, W, C] int, t [B], cond [B] | None, *, rngs) -> logits [B, H, W, C, V] float32."""

  def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
    if not isinstance(config, UNetConfig):
      raise ValueError(f"UNet needs a UNetConfig; got {type(config).__name__}")
    super().__init__(config, UNetMiddle(config, rngs=rngs), scale_shift=False, rngs=rngs)
