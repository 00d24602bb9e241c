"""DiT middle of the ImageNet-64 U-ViT (md4.md §4.2; md4 `networks/dit.py`, Peebles & Xie 2023).

Patchify [B, H, W, F] into (H/p)(W/p) tokens, add a learnable position embedding initialised to
2-D sin-cos, run adaLN-Zero transformer blocks (the text transformer's `TransformerBlock`, without
RoPE), project back with the zero-initialised `FinalLayer`, unpatchify, and add the input: the
middle starts as the identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from md4_jax.nn import axes
from md4_jax.nn import blocks
from md4_jax.nn import embeddings
from md4_jax.nn import layers


class DiT(nnx.Module):
  """h [B, H, W, F] (H = W = grid * patch_size) -> h + DiT(h), same shape."""

  def __init__(self, in_dim: int, *, grid: int, patch_size: int, width: int, num_heads: int,
               num_layers: int, cond_dim: int, mlp_type: str, dropout: float, rngs: nnx.Rngs,
               dtype=jnp.float32, attention: str = "auto", remat: bool = False, scan_layers: bool = False):
    self.patch_size = patch_size
    self.remat = remat
    patch_dim = patch_size * patch_size * in_dim
    self.patch_embed = layers.dense(patch_dim, width, (None, axes.EMBED), dtype=dtype, rngs=rngs)
    self.pos_embed = nnx.Param(
        jnp.asarray(embeddings.sincos_2d(width, grid), jnp.float32)[None],  # [1, N, D]
        out_sharding=(None, None, axes.EMBED), eager_sharding=False)
    self.num_layers = num_layers
    self.blocks = blocks.make_stack(
        lambda rngs: blocks.TransformerBlock(width, num_heads, cond_dim=cond_dim, mlp_type=mlp_type,
                                             dropout=dropout, mlp_init_scale=2.0 / num_layers, dtype=dtype,
                                             attention=attention, rngs=rngs),
        num_layers, scan=scan_layers, rngs=rngs)
    self.final = blocks.FinalLayer(width, patch_dim, cond_dim=cond_dim, out_name=None,
                                   dtype=dtype, rngs=rngs)

  def __call__(self, h: jax.Array, c: jax.Array | None, key: jax.Array | None) -> jax.Array:
    b, height, width, dim = h.shape
    p = self.patch_size
    gh, gw = height // p, width // p
    x = h.reshape(b, gh, p, gw, p, dim).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, -1)
    x = self.patch_embed(x) + self.pos_embed[...]  # [B, N, D]

    x = blocks.apply_stack(self.blocks, x, c, None, layers.split_key(key, self.num_layers),
                           use_remat=self.remat)
    x = self.final(x, c)  # [B, N, p*p*F]
    x = x.reshape(b, gh, gw, p, p, dim).transpose(0, 1, 3, 2, 4, 5).reshape(h.shape)
    return h + x
