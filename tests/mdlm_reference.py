"""A float64 NumPy forward of MDLM's DiT with SUBS, written from shared/reference/mdlm_dit.md (independent of
md4_jax), and random checkpoints in the PyTorch layout (tests only)."""

import numpy as np

MASKED_LOGIT = -1e6  # MDLM's neg_infinity


def random_state_dict(vocab_rows: int, width: int, num_blocks: int, cond_dim: int, seed: int = 0,
                      scale: float = 0.3) -> dict[str, np.ndarray]:
  """Every DiT parameter (torch key -> float32 array, Linear weights [out, in]) in the module's registration order,
  random and nonzero (zero-initialised layers of a fresh model would hide mistakes)."""
  rng = np.random.default_rng(seed)
  d, c, h = width, cond_dim, 4 * width
  shapes = [("vocab_embed.embedding", (vocab_rows, d)), ("sigma_map.mlp.0.weight", (c, 256)),
            ("sigma_map.mlp.0.bias", (c,)), ("sigma_map.mlp.2.weight", (c, c)), ("sigma_map.mlp.2.bias", (c,))]
  for i in range(num_blocks):
    shapes += [(f"blocks.{i}.norm1.weight", (d,)), (f"blocks.{i}.attn_qkv.weight", (3 * d, d)),
               (f"blocks.{i}.attn_out.weight", (d, d)), (f"blocks.{i}.norm2.weight", (d,)),
               (f"blocks.{i}.mlp.0.weight", (h, d)), (f"blocks.{i}.mlp.0.bias", (h,)),
               (f"blocks.{i}.mlp.2.weight", (d, h)), (f"blocks.{i}.mlp.2.bias", (d,)),
               (f"blocks.{i}.adaLN_modulation.weight", (6 * d, c)), (f"blocks.{i}.adaLN_modulation.bias", (6 * d,))]
  shapes += [("output_layer.norm_final.weight", (d,)), ("output_layer.linear.weight", (vocab_rows, d)),
             ("output_layer.linear.bias", (vocab_rows,)), ("output_layer.adaLN_modulation.weight", (2 * d, c)),
             ("output_layer.adaLN_modulation.bias", (2 * d,))]
  out = {}
  for key, shape in shapes:
    fan_in = shape[-1] if len(shape) == 2 and "embedding" not in key else 1
    base = 1.0 if key.endswith("norm1.weight") or key.endswith("norm2.weight") or "norm_final" in key else 0.0
    out[key] = (base + scale * rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
  return out


def _layer_norm(y, weight):
  mean = y.mean(-1, keepdims=True)
  var = ((y - mean) ** 2).mean(-1, keepdims=True)
  return (y - mean) / np.sqrt(var + 1e-5) * weight


def _silu(a):
  return a / (1.0 + np.exp(-a))


def _gelu_tanh(a):
  return 0.5 * a * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (a + 0.044715 * a ** 3)))


def _linear(sd, name, a):
  out = a @ sd[name + ".weight"].T
  return out + sd[name + ".bias"] if name + ".bias" in sd else out


def log_probs(state: dict[str, np.ndarray], x: np.ndarray, sigma: np.ndarray, n_heads: int) -> np.ndarray:
  """SUBS log-probabilities over the data tokens [B, L, V_model - 1] of ids x [B, L] (mask = V_model - 1) at noise
  levels sigma [B] (zeros for a model without time conditioning), float64."""
  sd = {k: v.astype(np.float64) for k, v in state.items()}
  num_blocks = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
  h = sd["vocab_embed.embedding"][x]
  batch, length, width = h.shape
  head_dim = width // n_heads
  half = 128
  freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
  angles = sigma[:, None] * freqs[None]
  c = _silu(_linear(sd, "sigma_map.mlp.2", _silu(_linear(sd, "sigma_map.mlp.0",
                                                           np.concatenate([np.cos(angles), np.sin(angles)], -1)))))
  inv_freq = 1.0 / 10000.0 ** (np.arange(0, head_dim, 2) / head_dim)
  position_angles = np.arange(length)[:, None] * inv_freq[None]
  cos, sin = np.cos(position_angles)[None, :, None], np.sin(position_angles)[None, :, None]

  def rotate(q):  # [B, L, H, Dh], rotate-half
    q1, q2 = q[..., :head_dim // 2], q[..., head_dim // 2:]
    return np.concatenate([q1 * cos - q2 * sin, q2 * cos + q1 * sin], -1)

  for i in range(num_blocks):
    p = f"blocks.{i}."
    mods = _linear(sd, p + "adaLN_modulation", c)[:, None]
    shift1, scale1, gate1, shift2, scale2, gate2 = np.split(mods, 6, -1)
    a = _layer_norm(h, sd[p + "norm1.weight"]) * (1 + scale1) + shift1
    qkv = (a @ sd[p + "attn_qkv.weight"].T).reshape(batch, length, 3, n_heads, head_dim)
    q, k, v = rotate(qkv[:, :, 0]), rotate(qkv[:, :, 1]), qkv[:, :, 2]
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width)
    h = h + gate1 * (attended @ sd[p + "attn_out.weight"].T)
    m = _layer_norm(h, sd[p + "norm2.weight"]) * (1 + scale2) + shift2
    h = h + gate2 * _linear(sd, p + "mlp.2", _gelu_tanh(_linear(sd, p + "mlp.0", m)))
  shift, scale = np.split(_linear(sd, "output_layer.adaLN_modulation", c)[:, None], 2, -1)
  logits = _linear(sd, "output_layer.linear", _layer_norm(h, sd["output_layer.norm_final.weight"]) * (1 + scale)
                   + shift)
  mask = logits.shape[-1] - 1
  logits[..., mask] += MASKED_LOGIT
  top = logits.max(-1, keepdims=True)
  logits = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  unmasked = x != mask
  logits[unmasked] = MASKED_LOGIT
  logits[unmasked, x[unmasked]] = 0.0
  return logits[..., :mask]
