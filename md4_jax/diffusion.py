"""MD4 forward process and objectives (MD4 paper §2-3, App. D-E): pure functions of a denoiser.

A denoiser is any `denoise_fn(z_t, t)`: z_t int32 [B, *S] with mask id V, t float [B], returning
log-probabilities [B, *S, V] over the V data tokens (no mass on the mask). Losses are per example, in nats.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from md4_jax.schedules import MaskingSchedule

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
# integrand(log_probs [B, *S, V]) -> per-token integrand [B, *S], summed over masked tokens.
Integrand = Callable[[jax.Array], jax.Array]


def reverse_broadcast(a: jax.Array, ndim: int) -> jax.Array:
  """[B] -> [B, 1, ..., 1] with `ndim` dimensions in all (a per-example value over its tokens)."""
  return a.reshape(a.shape + (1,) * (ndim - a.ndim))


def sample_times(key: jax.Array, batch_size: int, antithetic: bool = True) -> jax.Array:
  """t [B] in [0, 1). Antithetic: t_i = (u + i / B) mod 1 with one u ~ U[0, 1) (MD4 Alg. 1)."""
  if antithetic:
    u = jax.random.uniform(key, ())
    return jnp.mod(u + jnp.arange(batch_size) / batch_size, 1.0)
  return jax.random.uniform(key, (batch_size,))


def mask_tokens(key: jax.Array, x: jax.Array, alpha_t: jax.Array, mask_id: int) -> jax.Array:
  """Samples z_t ~ q(z_t | x) (MD4 §2.1): each token kept w.p. alpha_t, else replaced by mask_id.

  Args:
    x: int [B, *S] data tokens in [0, mask_id).
    alpha_t: [B] (one value per example) or [B, *S] (one per token, GenMD4).
  Returns:
    z_t: int32 [B, *S].
  """
  if not isinstance(x, jax.core.Tracer) and x.size:
    x_np = np.asarray(x)  # numpy, not jnp: a jnp reduction inside a trace would give a tracer
    if x_np.min() < 0 or x_np.max() >= mask_id:
      raise ValueError(f"data tokens must lie in [0, {mask_id}) with mask id {mask_id} outside the "
                       f"vocabulary; got tokens in [{x_np.min()}, {x_np.max()}]")
  if alpha_t.ndim not in (1, x.ndim) or alpha_t.shape[0] != x.shape[0] or (
      alpha_t.ndim == x.ndim and alpha_t.shape != x.shape):
    raise ValueError(f"alpha_t must have shape [B]={x.shape[:1]} or {x.shape}; got {alpha_t.shape}")
  keep = jax.random.uniform(key, x.shape) < reverse_broadcast(alpha_t, x.ndim)
  return jnp.where(keep, x, mask_id).astype(jnp.int32)


def denoiser_vocab_size(denoise_fn: DenoiseFn, x: jax.Array) -> int:
  """V of a denoiser, from its output shape (traced abstractly, no computation)."""
  return jax.eval_shape(denoise_fn, jax.ShapeDtypeStruct(x.shape, jnp.int32),
                        jax.ShapeDtypeStruct(x.shape[:1], jnp.float32)).shape[-1]


def check_log_probs(log_probs: jax.Array, x: jax.Array) -> int:
  """Checks the denoiser output is [*x.shape, V]; returns V."""
  if log_probs.shape[:-1] != x.shape:
    raise ValueError(f"denoiser returned shape {log_probs.shape}; expected {x.shape} + (V,)")
  return log_probs.shape[-1]


def diffusion_term(denoise_fn: DenoiseFn, key: jax.Array, x: jax.Array, t: jax.Array,
                   alpha_t: jax.Array, integrand: Integrand) -> tuple[jax.Array, jax.Array]:
  """One-sample estimate of the time integrand of the NELBO at times t.

  Masks x with alpha_t, runs the denoiser once, and sums `integrand` over masked tokens.
  Returns (term [B], z_t [B, *S]). The mask id is the denoiser's V, read from its output shape.
  """
  vocab_size = denoiser_vocab_size(denoise_fn, x)
  z_t = mask_tokens(key, x, alpha_t, vocab_size)
  log_probs = denoise_fn(z_t, t)  # [B, *S, V]
  check_log_probs(log_probs, x)
  per_token = integrand(log_probs)  # [B, *S]
  masked = z_t == vocab_size
  axes = tuple(range(1, x.ndim))
  return jnp.sum(jnp.where(masked, per_token, 0.0), axis=axes), z_t


def log_prob_of(log_probs: jax.Array, x: jax.Array) -> jax.Array:
  """log mu[x] per token: [B, *S, V], [B, *S] -> [B, *S]."""
  return jnp.take_along_axis(log_probs, x[..., None].astype(jnp.int32), axis=-1)[..., 0]


def reconstruction_nats(schedule_eps: float, num_tokens: int, vocab_size: int) -> float:
  """N (1 - alpha(0)) log V: the reconstruction term of md4.md §2.7 (a mask left at t=0 is uniform)."""
  return num_tokens * schedule_eps * math.log(vocab_size)


def _nelbo(denoise_fn: DenoiseFn, key: jax.Array, x: jax.Array, schedule: MaskingSchedule, t: jax.Array,
           coeff: jax.Array) -> jax.Array:
  """coeff [B] times sum_{masked n} log mu^n[x^n] at times t [B], plus the reconstruction term: [B] nats."""
  coeff = reverse_broadcast(coeff, x.ndim)
  term, _ = diffusion_term(denoise_fn, key, x, t, schedule.alpha(t),
                           lambda log_probs: coeff * log_prob_of(log_probs, x))
  num_tokens = math.prod(x.shape[1:])
  return term + reconstruction_nats(schedule.eps, num_tokens, denoiser_vocab_size(denoise_fn, x))


def continuous_nelbo(denoise_fn: DenoiseFn, key: jax.Array, x: jax.Array,
                     schedule: MaskingSchedule, antithetic: bool = True) -> jax.Array:
  """Per-example continuous-time NELBO in nats (MD4 eq. 4/5 + reconstruction), shape [B].

  L = int_0^1 alpha'_t / (1 - alpha_t) E_q[ sum_{masked n} log mu^n(z_t, t)[x^n] ] dt + N eps log V,
  estimated with one t per example (antithetic over the batch when `antithetic`). The prior term
  (eps log V per token, md4.md §2.7) is left out as in MD4's reported numbers.
  """
  key_t, key_mask = jax.random.split(key)
  t = sample_times(key_t, x.shape[0], antithetic)
  return _nelbo(denoise_fn, key_mask, x, schedule, t, schedule.weight(t))


def discrete_nelbo(denoise_fn: DenoiseFn, key: jax.Array, x: jax.Array,
                   schedule: MaskingSchedule, num_steps: int) -> jax.Array:
  """Per-example discrete-time NELBO L_T in nats (md4.md §2.4), shape [B].

  t is drawn antithetically and snapped to the grid t(i) = i/T, s(i) = (i-1)/T; the one-sample estimate is
  T (alpha_t - alpha_s)/(1 - alpha_t) sum_{masked n} log mu^n[x^n], plus the reconstruction term.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1; got {num_steps}")
  key_t, key_mask = jax.random.split(key)
  u = sample_times(key_t, x.shape[0], antithetic=True)
  t = jnp.minimum(jnp.floor(u * num_steps) + 1.0, num_steps) / num_steps
  s = t - 1.0 / num_steps
  coeff = num_steps * (schedule.alpha(t) - schedule.alpha(s)) / schedule.one_minus_alpha(t)  # [B] <= 0
  return _nelbo(denoise_fn, key_mask, x, schedule, t, coeff)


def bits_per_token(nats: jax.Array, num_tokens: int) -> jax.Array:
  """Nats per example -> bits per token (BPC for characters, bits/dim for images)."""
  return nats / (num_tokens * math.log(2.0))


def perplexity(nats: jax.Array, num_tokens: int) -> jax.Array:
  """Nats per example -> per-token perplexity exp(nats / N) (= 2^bits per token); an upper bound."""
  return jnp.exp(nats / num_tokens)
