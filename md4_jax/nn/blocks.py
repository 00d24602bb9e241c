"""Transformer pieces shared by the text transformer and the U-ViT's DiT middle (md4.md §4.1)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from md4_jax.nn import axes
from md4_jax.nn import embeddings
from md4_jax.nn.layers import adaln_modulation, dense, dropout, modulate, remat, rms_norm, scale_free_layer_norm
from md4_jax.nn.layers import split_key

Rope = tuple[jax.Array, jax.Array]  # cos, sin: [L, head_dim // 2] each
MLP_ACTIVATIONS = {"glu": jax.nn.sigmoid, "swiglu": jax.nn.swish, "geglu": jax.nn.gelu}


def attention_implementation(setting: str, dtype, head_dim: int) -> str:
  """'auto' -> cuDNN flash attention on a GPU for 16-bit inputs it supports, else XLA."""
  if setting == "auto":
    fused = (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
             and head_dim % 8 == 0 and head_dim <= 128)
    return "cudnn" if fused else "xla"
  return setting


class Attention(nnx.Module):
  """Multi-head self-attention through `jax.nn.dot_product_attention`, optional RoPE on q, k."""

  def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs, causal: bool = False,
               use_bias: bool = False, zero_out: bool = False, dtype=jnp.float32,
               implementation: str = "auto"):
    self.num_heads = num_heads
    self.causal = causal
    self.implementation = implementation
    qkv = dict(use_bias=use_bias, dtype=dtype, rngs=rngs)
    self.query = dense(width, width, (axes.EMBED, axes.HEADS), **qkv)
    self.key = dense(width, width, (axes.EMBED, axes.HEADS), **qkv)
    self.value = dense(width, width, (axes.EMBED, axes.HEADS), **qkv)
    self.out = dense(width, width, (axes.HEADS, axes.EMBED), zero=zero_out, **qkv)

  def __call__(self, x: jax.Array, rope: Rope | None = None) -> jax.Array:
    """x [B, L, D] -> [B, L, D]."""
    b, length, width = x.shape
    shape = (b, length, self.num_heads, width // self.num_heads)
    q = self.query(x).reshape(shape)  # [B, L, H, Dh]
    k = self.key(x).reshape(shape)
    v = self.value(x).reshape(shape)
    if rope is not None:
      q, k = embeddings.apply_rope(q, *rope), embeddings.apply_rope(k, *rope)
    implementation = attention_implementation(self.implementation, q.dtype, shape[-1])
    out = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal,
                                       implementation=implementation)
    return self.out(out.reshape(b, length, width))


def mlp_hidden_dim(width: int, multiple_of: int = 32) -> int:
  """md4 / LLaMA: int(2/3 * 4 d) rounded up to a multiple of 32 (768 -> 2048, 1024 -> 2752)."""
  hidden = int(2 * 4 * width / 3)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class GatedMLP(nnx.Module):
  """w2(act(w1 x) * w3 x), act = sigmoid ('glu'), swish ('swiglu') or gelu ('geglu'); no biases."""

  def __init__(self, width: int, mlp_type: str, *, rngs: nnx.Rngs, init_scale: float = 1.0,
               dtype=jnp.float32):
    hidden = mlp_hidden_dim(width)
    kw = dict(use_bias=False, init_scale=init_scale, dtype=dtype, rngs=rngs)
    self.activation = MLP_ACTIVATIONS[mlp_type]
    self.w1 = dense(width, hidden, (axes.EMBED, axes.MLP), **kw)
    self.w3 = dense(width, hidden, (axes.EMBED, axes.MLP), **kw)
    self.w2 = dense(hidden, width, (axes.MLP, axes.EMBED), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.w2(self.activation(self.w1(x)) * self.w3(x))


def _pre_norm(width: int, cond_dim: int, rngs: nnx.Rngs) -> nnx.Module:
  """The parameter-free LayerNorm that adaLN modulates, or RMSNorm without conditioning."""
  return scale_free_layer_norm(width, rngs=rngs) if cond_dim else rms_norm(width, rngs=rngs)


class TransformerBlock(nnx.Module):
  """Pre-norm block; adaLN-Zero modulation when `cond_dim > 0`, RMSNorm pre-norm otherwise.

  adaLN-Zero (md4 `cond_type='adaln_zero'`, DiT): Dense(6 d, zero init)(swish(c)) gives shift /
  scale / gate for attention and MLP around parameter-free LayerNorms, so the block starts as the
  identity. Dropout is channel-wise, shared over the sequence (md4 Dropout1d).
  """

  def __init__(self, width: int, num_heads: int, *, cond_dim: int, mlp_type: str, dropout: float,
               rngs: nnx.Rngs, causal: bool = False, mlp_init_scale: float = 1.0,
               dtype=jnp.float32, attention: str = "auto"):
    self.dropout = dropout
    self.attention = Attention(width, num_heads, causal=causal, dtype=dtype,
                               implementation=attention, rngs=rngs)
    self.mlp = GatedMLP(width, mlp_type, init_scale=mlp_init_scale, dtype=dtype, rngs=rngs)
    self.modulation = adaln_modulation(cond_dim, width, 6, dtype=dtype, rngs=rngs) if cond_dim else None
    self.attention_norm = _pre_norm(width, cond_dim, rngs)
    self.mlp_norm = _pre_norm(width, cond_dim, rngs)

  def __call__(self, x: jax.Array, c: jax.Array | None, rope: Rope | None,
               key: jax.Array | None) -> jax.Array:
    """x [B, L, D] float32, c [B, C] or None -> [B, L, D] float32."""
    key_attention, key_mlp = split_key(key, 2)
    if self.modulation is None:
      h = x + dropout(self.attention(self.attention_norm(x), rope), self.dropout, key_attention,
                      (1,))
      return h + dropout(self.mlp(self.mlp_norm(h)), self.dropout, key_mlp, (1,))
    mods = jnp.split(self.modulation(jax.nn.swish(c))[:, None, :], 6, axis=-1)  # 6 x [B, 1, D]
    shift_att, scale_att, gate_att, shift_mlp, scale_mlp, gate_mlp = mods
    a = self.attention(modulate(self.attention_norm(x), shift_att, scale_att), rope)
    h = x + gate_att * dropout(a, self.dropout, key_attention, (1,))
    m = self.mlp(modulate(self.mlp_norm(h), shift_mlp, scale_mlp))
    return h + gate_mlp * dropout(m, self.dropout, key_mlp, (1,))


class FinalLayer(nnx.Module):
  """Final (adaLN or RMS) norm and a zero-initialised bias-free projection to `out_dim`."""

  def __init__(self, width: int, out_dim: int, *, cond_dim: int, out_name: str | None,
               rngs: nnx.Rngs, dtype=jnp.float32):
    self.modulation = adaln_modulation(cond_dim, width, 2, dtype=dtype, rngs=rngs) if cond_dim else None
    self.norm = _pre_norm(width, cond_dim, rngs)
    self.head = dense(width, out_dim, (axes.EMBED, out_name), use_bias=False, zero=True,
                      dtype=dtype, out_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array, c: jax.Array | None) -> jax.Array:
    """x [B, L, D], c [B, C] or None -> [B, L, out_dim] float32."""
    h = self.norm(x)
    if self.modulation is not None:
      shift, scale = jnp.split(self.modulation(jax.nn.swish(c))[:, None, :], 2, axis=-1)
      h = modulate(h, shift, scale)
    return self.head(h)


def make_stack(make_block: Callable[[nnx.Rngs], nnx.Module], num_layers: int, *, scan: bool,
               rngs: nnx.Rngs) -> nnx.Module:
  """`num_layers` blocks: an nnx.List of them, or with `scan` one block whose parameters carry a leading
  [num_layers] axis (logical name None), which `apply_stack` runs with jax.lax.scan so that one block is
  compiled instead of `num_layers` (the parameter tree, and so checkpoints, differ between the two)."""
  if not scan:
    return nnx.List([make_block(rngs) for _ in range(num_layers)])

  @nnx.split_rngs(splits=num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
  def stacked(rngs):
    return make_block(rngs)

  return stacked(rngs)


def apply_stack(stack: nnx.Module, x: jax.Array, c: jax.Array | None, rope: Rope | None,
                keys: list[jax.Array | None], *, use_remat: bool) -> jax.Array:
  """x [B, N, D] float32 through the blocks of `make_stack` in order; `keys`: a dropout key (or None) per block.

  `use_remat` recomputes each block's activations in the backward pass (jax.checkpoint around the block).
  """
  def apply(block, x, key):
    return block(x, c, rope, key)

  if use_remat:
    apply = remat(apply)
  if isinstance(stack, nnx.List):
    for block, key in zip(stack, keys):
      x = apply(block, x, key)
    return x
  graphdef, state = nnx.split(stack)  # leaves [num_layers, ...]

  def body(x, inputs):
    layer_state, key = inputs
    return apply(nnx.merge(graphdef, layer_state), x, key), None

  stacked_keys = None if keys[0] is None else jnp.stack(keys)  # [num_layers] keys
  return jax.lax.scan(body, x, (state, stacked_keys))[0]
