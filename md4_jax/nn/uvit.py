"""U-ViT for ImageNet 64x64 (md4.md §4.2; md4 `networks/uvit.py`).

The `resnet.ImageBackbone` with conditional-GroupNorm ResBlocks at full resolution around a DiT
middle (patch 2 -> 32x32 = 1024 tokens; hidden 768, 12 heads, adaLN-Zero in the paper config).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from md4_jax.nn import blocks
from md4_jax.nn import checks
from md4_jax.nn import dit
from md4_jax.nn import resnet

UVIT_SIZES = {
    "tiny": dict(feature_dim=32, num_layers=1, num_groups=8, image_size=8, dit_layers=2,
                 dit_heads=2, dit_width=64),
    # md4 configs/md4/imagenet64.py (the paper's cosine-schedule sample-visualisation model).
    "imagenet64": dict(feature_dim=256, num_layers=8, image_size=64, dit_layers=20, dit_heads=12,
                       dit_width=768),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class UViTConfig(resnet.ConvNetConfig):
  """`resnet.ConvNetConfig` plus the DiT middle."""
  image_size: int = 64  # H = W; fixes the number of DiT tokens (image_size / patch_size)^2
  patch_size: int = 2
  dit_layers: int = 20
  dit_heads: int = 12
  dit_width: int = 768
  mlp_type: str = "glu"  # gated MLP of the DiT blocks, as in the text transformer
  scan_layers: bool = False  # DiT blocks stacked and run by jax.lax.scan (nn.blocks.make_stack)

  def __post_init__(self):
    super().__post_init__()
    checks.check_positive(image_size=self.image_size, patch_size=self.patch_size,
                          dit_layers=self.dit_layers, dit_heads=self.dit_heads,
                          dit_width=self.dit_width)
    checks.check_divides("image_size", self.image_size, "patch_size", self.patch_size)
    checks.check_divides("dit_width", self.dit_width, "dit_heads", self.dit_heads)
    checks.check_divides("dit_width", self.dit_width, "4 (2-D sin-cos position table)", 4)
    checks.check_choice("mlp_type", self.mlp_type, tuple(blocks.MLP_ACTIVATIONS))


class UViT(resnet.ImageBackbone):
  """(z_t [B, H, W, C] int, t [B], cond [B] | None, *, rngs) -> logits [B, H, W, C, V] float32."""

  def __init__(self, config: UViTConfig, *, rngs: nnx.Rngs):
    if not isinstance(config, UViTConfig):
      raise ValueError(f"UViT needs a UViTConfig; got {type(config).__name__}")
    c = config
    middle = dit.DiT(
        c.feature_dim, grid=c.image_size // c.patch_size, patch_size=c.patch_size,
        width=c.dit_width, num_heads=c.dit_heads, num_layers=c.dit_layers, cond_dim=c.cond_dim,
        mlp_type=c.mlp_type, dropout=c.dropout, dtype=checks.DTYPES[c.dtype],
        attention=c.attention, remat=c.remat, scan_layers=c.scan_layers, rngs=rngs)
    super().__init__(config, middle, scale_shift=True, rngs=rngs)

  def __call__(self, z_t: jax.Array, t: jax.Array, cond: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits [B, H, W, C, V] float32; H = W = config.image_size (the DiT token grid)."""
    size = self.config.image_size
    if z_t.ndim != 4 or z_t.shape[1:3] != (size, size):
      raise ValueError(f"z_t must have shape [B, {size}, {size}, C]; got {z_t.shape}")
    return super().__call__(z_t, t, cond, rngs=rngs)
