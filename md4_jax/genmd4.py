"""GenMD4: state-dependent masking schedules with learnable per-token exponents (MD4 paper §6, App. I).

Token v is masked along its own shifted polynomial schedule alpha_{t,v} = (1 - 2 eps)(1 - t^{w_v}) + eps,
w = softplus(w_raw) in R^V. The same schedule code and the same estimator as MD4 are used (diffusion.py);
only the integrand differs, and with all w_v = c the NELBO equals MD4's 'poly<c>' NELBO exactly.

Gradients w.r.t. w need the score of q(z_t | x) because the masking distribution depends on w: the
2-sample REINFORCE leave-one-out surrogate (App. I.2). The surrogate is for gradients only; report the NELBO.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from md4_jax import diffusion
from md4_jax.schedules import MaskingSchedule


def init_w_raw(vocab_size: int, power_init: float = 1.0) -> jax.Array:
  """w_raw [V] with softplus(w_raw) = power_init (1.0 = the linear schedule)."""
  if power_init <= 0:
    raise ValueError(f"power_init must be > 0; got {power_init}")
  return jnp.full((vocab_size,), math.log(math.expm1(power_init)), jnp.float32)


def schedule(w: jax.Array, eps: float = 1e-4) -> MaskingSchedule:
  """The per-token schedule: a 'poly' MaskingSchedule whose exponent is the vector w [V]."""
  return MaskingSchedule("poly", eps, (w,))


def _token_alpha_and_gamma(w: jax.Array, eps: float, t: jax.Array, x: jax.Array):
  """alpha_{t, x_n} [B, *S] and gamma_t = dalpha/(1-alpha) over the vocabulary [B, *1, V]."""
  sched = schedule(w, eps)
  t_v = diffusion.reverse_broadcast(t, x.ndim + 1)  # [B, *1, 1]
  alpha_v = sched.alpha(t_v)  # [B, *1, V]
  gamma_v = sched.weight(t_v)  # [B, *1, V]
  alpha_x = jnp.take_along_axis(jnp.broadcast_to(alpha_v, x.shape + w.shape),
                                x[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return alpha_x, gamma_v


def _integrand(gamma_v: jax.Array, x: jax.Array):
  """Per masked token: gamma^T (x0 - mu + x0 x0^T log mu) = gamma_x (1 + log mu_x) - gamma . mu (eq. 12)."""
  def integrand(log_probs):
    gamma_x = jnp.take_along_axis(jnp.broadcast_to(gamma_v, log_probs.shape),
                                  x[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return (gamma_x * (1.0 + diffusion.log_prob_of(log_probs, x))
            - jnp.sum(gamma_v * jnp.exp(log_probs), axis=-1))
  return integrand


def _log_q(w: jax.Array, eps: float, t: jax.Array, x: jax.Array, z_t: jax.Array) -> jax.Array:
  """log q(z_t | x) [B] under the per-token schedule (differentiable in w)."""
  sched = schedule(w, eps)
  t_v = diffusion.reverse_broadcast(t, x.ndim + 1)
  log_alpha = jnp.log(sched.alpha(t_v))
  log_one_minus_alpha = jnp.log(sched.one_minus_alpha(t_v))
  gather = lambda a: jnp.take_along_axis(jnp.broadcast_to(a, x.shape + w.shape),
                                         x[..., None].astype(jnp.int32), axis=-1)[..., 0]
  vocab_size = w.shape[0]
  per_token = jnp.where(z_t == vocab_size, gather(log_one_minus_alpha), gather(log_alpha))
  return jnp.sum(per_token, axis=tuple(range(1, x.ndim)))


def _check(w: jax.Array, denoise_fn, x: jax.Array) -> None:
  vocab_size = diffusion.denoiser_vocab_size(denoise_fn, x)
  if w.shape != (vocab_size,):
    raise ValueError(f"w must have shape [V]=({vocab_size},); got {w.shape}")
  if not isinstance(w, jax.core.Tracer) and np.asarray(w).min() <= 0:
    raise ValueError(f"w must be positive (use w = softplus(w_raw)); min is {np.asarray(w).min()}")


def nelbo(denoise_fn, key: jax.Array, x: jax.Array, w: jax.Array, eps: float = 1e-4,
          antithetic: bool = True) -> jax.Array:
  """Per-example GenMD4 NELBO in nats [B] (eq. 12 + reconstruction), one sample of (t, z_t).

  Uses the same key splitting as `diffusion.continuous_nelbo`, so with w = c everywhere it returns the
  same numbers as MD4 with schedule 'poly<c>' for the same key.
  """
  _check(w, denoise_fn, x)
  key_t, key_mask = jax.random.split(key)
  t = diffusion.sample_times(key_t, x.shape[0], antithetic)
  term, _ = _diffusion_term(denoise_fn, key_mask, x, t, w, eps)
  return term + _recon(eps, x, w)


def _diffusion_term(denoise_fn, key, x, t, w, eps):
  alpha_x, gamma_v = _token_alpha_and_gamma(w, eps, t, x)
  return diffusion.diffusion_term(denoise_fn, key, x, t, alpha_x, _integrand(gamma_v, x))


def _recon(eps: float, x: jax.Array, w: jax.Array) -> float:
  # alpha_{0,v} = 1 - eps for every v, so a mask left at t=0 is uniform: the MD4 term.
  return diffusion.reconstruction_nats(eps, math.prod(x.shape[1:]), w.shape[0])


class GenMD4Loss(NamedTuple):
  surrogate: jax.Array  # [] the objective to differentiate (NELBO + RLOO score term)
  nelbo: jax.Array      # [B] per-example NELBO in nats, the number to report


def rloo_loss(denoise_fn, key: jax.Array, x: jax.Array, w: jax.Array, eps: float = 1e-4,
              antithetic: bool = True) -> GenMD4Loss:
  """2-sample REINFORCE leave-one-out objective (App. I.2).

  Two masks z^1, z^2 at the same t. surrogate = mean_B[ (L1 + L2)/2 + 1/2 sg(L1 - L2)(log q(z^1) - log q(z^2)) ]
  + recon. Its gradient w.r.t. the network is the average pathwise gradient (the score term carries none);
  w.r.t. w it is pathwise (through gamma) plus the unbiased score-function term.
  """
  _check(w, denoise_fn, x)
  key_t, key_mask = jax.random.split(key)
  key_1, key_2 = jax.random.split(key_mask)
  t = diffusion.sample_times(key_t, x.shape[0], antithetic)
  loss_1, z_1 = _diffusion_term(denoise_fn, key_1, x, t, w, eps)
  loss_2, z_2 = _diffusion_term(denoise_fn, key_2, x, t, w, eps)
  score = _log_q(w, eps, t, x, z_1) - _log_q(w, eps, t, x, z_2)
  recon = _recon(eps, x, w)
  nelbo_per_example = 0.5 * (loss_1 + loss_2) + recon
  surrogate = jnp.mean(nelbo_per_example + 0.5 * jax.lax.stop_gradient(loss_1 - loss_2) * score)
  return GenMD4Loss(surrogate=surrogate, nelbo=nelbo_per_example)
