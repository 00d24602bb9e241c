"""Position and conditioning embeddings shared by the transformer, the U-Net and the U-ViT.

- `timestep_embedding`: VDM / MD4 sinusoidal embedding of t * 1000 (md4.md §2.6, §4.1).
- `CondEmbedding`: t (and optionally a class label) -> conditioning vector (md4 `CondEmbedding`).
- `noise_features`: MDLM's 256-frequency sinusoidal features of the noise level sigma (mdlm_dit.md).
- `rope_tables` / `apply_rope`: rotary position embedding on interleaved pairs (md4.md §4.1);
  `apply_rope_half`: the same tables in the rotate-half (GPT-NeoX) convention of MDLM's DiT.
- `sincos_2d`: 2-D sin-cos table that initialises the DiT position embedding (md4.md §4.2).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from md4_jax.nn import axes
from md4_jax.nn import layers


def timestep_embedding(t: jax.Array, dim: int, scale: float = 1000.0) -> jax.Array:
  """Sinusoidal embedding of `scale * t`: [B] -> [B, dim], halves [sin, cos] (VDM convention)."""
  if t.ndim != 1:
    raise ValueError(f"t must have shape [B]; got shape {t.shape}")
  half = dim // 2
  freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  angles = scale * t.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, half]
  emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb  # [B, dim]


class CondEmbedding(nnx.Module):
  """Conditioning vector c = Dense(swish(Dense(4 D)([temb(t*1000), label_emb]))), width D.

  md4 `backward.CondEmbedding`: the sinusoidal time features and the label embedding are
  concatenated before the MLP. With `num_classes > 0` the label table has one extra row,
  id `num_classes`, used when no label is given (unconditional / classifier-free sampling).
  """

  def __init__(self, dim: int, *, time_conditioning: bool, num_classes: int, rngs: nnx.Rngs):
    if not time_conditioning and num_classes == 0:
      raise ValueError("CondEmbedding needs time_conditioning or num_classes > 0")
    self.dim = dim
    self.time_conditioning = time_conditioning
    self.num_classes = num_classes
    self.label_embed = layers.embed(num_classes + 1, dim, (None, axes.COND), rngs=rngs) if num_classes else None
    in_dim = dim * (int(time_conditioning) + int(num_classes > 0))
    self.dense1 = layers.dense(in_dim, 4 * dim, (axes.COND, axes.MLP), rngs=rngs)
    self.dense2 = layers.dense(4 * dim, dim, (axes.MLP, axes.COND), rngs=rngs)

  def __call__(self, t: jax.Array, cond: jax.Array | None) -> jax.Array:
    """t [B] in [0, 1], cond int [B] or None -> [B, D] float32."""
    parts = []
    if self.time_conditioning:
      parts.append(timestep_embedding(t, self.dim))
    if self.num_classes:
      if cond is None:
        cond = jnp.full(t.shape, self.num_classes, jnp.int32)
      if cond.shape != t.shape:
        raise ValueError(f"cond must have shape {t.shape} like t; got {cond.shape}")
      parts.append(self.label_embed(cond))
    elif cond is not None:
      raise ValueError("cond was given but the network has num_classes=0")
    c = jnp.concatenate(parts, axis=-1)
    return self.dense2(jax.nn.swish(self.dense1(c)))


def noise_features(sigma: jax.Array, dim: int = 256, max_period: float = 10_000.0) -> jax.Array:
  """MDLM TimestepEmbedder features: sigma [B] -> [B, dim], [cos, sin] of sigma * max_period^(-k / (dim/2))."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = sigma.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, half]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos, sin tables [L, head_dim // 2] with frequencies theta^(-2i / head_dim)."""
  freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  angles = np.outer(np.arange(length, dtype=np.float64), freqs)
  return jnp.asarray(np.cos(angles), jnp.float32), jnp.asarray(np.sin(angles), jnp.float32)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates interleaved pairs (x[2i], x[2i+1]) of x [B, L, H, Dh] by position angles."""
  x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  x_re, x_im = x32[..., 0], x32[..., 1]  # [B, L, H, Dh/2]
  cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  out = jnp.stack([x_re * cos - x_im * sin, x_re * sin + x_im * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


def apply_rope_half(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates (x[i], x[i + Dh/2]) of x [B, L, H, Dh] by position angles (rotate-half, non-interleaved)."""
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)  # [B, L, H, Dh/2] each
  cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
  """2-D sin-cos position table [grid*grid, dim] (MAE / DiT): half the channels per axis."""
  if dim % 4:
    raise ValueError(f"sincos_2d needs dim divisible by 4; got {dim}")
  omega = 1.0 / 10_000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

  def one_axis(pos):
    angles = np.outer(pos, omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # [N, dim/2]

  rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
  return np.concatenate([one_axis(rows.ravel()), one_axis(cols.ravel())], axis=1)
