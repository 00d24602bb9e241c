"""Primitive layers shared by all networks: annotated Dense, norms, call-time dropout.

Parameters are float32 and annotated with logical axes (`axes.py`); matmuls run in the compute
dtype `dtype`; the residual stream and the norms stay float32.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from md4_jax.nn import axes

NORM_EPS = 1e-5
EMBED_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)  # flax Embed


def partitioned(init, names: tuple[str | None, ...]):
  """Initializer annotated with logical axis names, without eager sharding.

  The module builds without a mesh; the training loop turns `nnx.get_partition_spec` and
  `axes.RULES` into shardings (e.g. by jitting the init with those out_shardings).
  """
  return nnx.with_partitioning(init, names, eager_sharding=False)


def embed(num_embeddings: int, dim: int, names: tuple[str | None, str | None], *, rngs: nnx.Rngs) -> nnx.Embed:
  """nnx.Embed with flax's default initializer, annotated with logical axes."""
  return nnx.Embed(num_embeddings, dim, embedding_init=partitioned(EMBED_INIT, names), rngs=rngs)


def dense(in_dim: int, out_dim: int, names: tuple[str | None, str | None], *, rngs: nnx.Rngs,
          use_bias: bool = True, zero: bool = False, init_scale: float = 1.0,
          dtype=jnp.float32, out_dtype=None) -> nnx.Linear:
  """nnx.Linear with partitioned kernel/bias; `zero` -> zero kernel (adaLN-Zero, output heads).

  Inputs are cast to `dtype`; `out_dtype=jnp.float32` keeps a float32 result of a bf16 matmul
  (output heads, so logits are not rounded to bf16).
  """
  if zero:
    kernel_init = nnx.initializers.zeros_init()
  else:
    kernel_init = nnx.initializers.variance_scaling(init_scale, "fan_in", "truncated_normal")
  return nnx.Linear(
      in_dim, out_dim, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
      preferred_element_type=out_dtype,
      kernel_init=partitioned(kernel_init, names),
      bias_init=partitioned(nnx.initializers.zeros_init(), (names[1],)), rngs=rngs)


def adaln_modulation(cond_dim: int, width: int, chunks: int, *, rngs: nnx.Rngs, dtype=jnp.float32) -> nnx.Linear:
  """adaLN-Zero: a zero-initialised Dense from the conditioning to `chunks` pieces of `width` (shift, scale, ...),
  float32 out."""
  return dense(cond_dim, chunks * width, (axes.COND, axes.EMBED), zero=True, dtype=dtype, out_dtype=jnp.float32,
               rngs=rngs)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN modulation of a normalised x."""
  return x * (1.0 + scale) + shift


def rms_norm(dim: int, *, rngs: nnx.Rngs) -> nnx.RMSNorm:
  return nnx.RMSNorm(dim, epsilon=NORM_EPS, rngs=rngs,
                     scale_init=partitioned(nnx.initializers.ones_init(), (axes.EMBED,)))


def scaled_layer_norm(dim: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm with a learned scale and no bias (MDLM's DiT), two-pass variance in float32."""
  return nnx.LayerNorm(dim, epsilon=NORM_EPS, use_bias=False, use_fast_variance=False, rngs=rngs,
                       scale_init=partitioned(nnx.initializers.ones_init(), (axes.EMBED,)))


def scale_free_layer_norm(dim: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm without parameters, modulated by adaLN shift / scale."""
  return nnx.LayerNorm(dim, epsilon=NORM_EPS, use_bias=False, use_scale=False, rngs=rngs)


def dropout(x: jax.Array, rate: float, key: jax.Array | None,
            broadcast_dims: Sequence[int] = ()) -> jax.Array:
  """Inverted dropout; identity when `key` is None or rate is 0 (no RNG lives in the module)."""
  return nnx.Dropout(rate, broadcast_dims=broadcast_dims)(x, deterministic=key is None, rngs=key)


def split_key(key: jax.Array | None, num: int) -> list[jax.Array | None]:
  return [None] * num if key is None else list(jax.random.split(key, num))


def conv3x3(in_dim: int, out_dim: int, *, rngs: nnx.Rngs, zero: bool = False,
            dtype=jnp.float32, out_dtype=None) -> nnx.Conv:
  """3x3 'SAME' convolution (flax default init or zero), output channels partitioned."""
  kernel_init = nnx.initializers.zeros_init() if zero else nnx.initializers.lecun_normal()
  return nnx.Conv(
      in_dim, out_dim, kernel_size=(3, 3), padding="SAME", dtype=dtype, param_dtype=jnp.float32,
      preferred_element_type=out_dtype,
      kernel_init=partitioned(kernel_init, (None, None, None, axes.CHANNELS)),
      bias_init=partitioned(nnx.initializers.zeros_init(), (axes.CHANNELS,)), rngs=rngs)


def group_norm(dim: int, num_groups: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
  return nnx.GroupNorm(
      dim, num_groups=num_groups, epsilon=1e-6, rngs=rngs,
      scale_init=partitioned(nnx.initializers.ones_init(), (axes.CHANNELS,)),
      bias_init=partitioned(nnx.initializers.zeros_init(), (axes.CHANNELS,)))


def remat(apply):
  """jax.checkpoint of apply(module, *args): activations inside are recomputed in the backward pass.

  The module goes through nnx.split / nnx.merge as a read-only pytree of its state, so this works at any trace
  depth (nnx.remat writes the module's variables back and fails when the module was merged inside an outer
  trace, as in the training step's scan over microbatches under jax.grad).
  """
  def wrapped(module, *args):
    graphdef, state = nnx.split(module)
    return jax.checkpoint(lambda state, *args: apply(nnx.merge(graphdef, state), *args))(state, *args)
  return wrapped
