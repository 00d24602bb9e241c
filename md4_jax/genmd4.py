"""GenMD4: state-dependent masking schedules with learnable per-token exponents (MD4 paper §6, App. I).

As md4's code defines it (md4.md §2.5, §2.9): token v is masked along its own schedule

    alpha_{t,v} = 1 - (1 - eps) t^{w_v},   w = softplus(w_raw) [V],   t in [t1, 1], t1 = 1e-3,

with no lower shift (alpha_{0,v} = 1, alpha_{1,v} = eps) and the weight gamma_{t,v} = alpha'_{t,v} / (1 - alpha_{t,v})
= -w_v / t exactly. The NELBO (eq. 12) is

    L = int_{t1}^1 gamma_t^T E_q[ sum_{masked n} (x^n - mu^n + x^n (x^n)^T log mu^n) ] dt + recon(t1),

recon(t1) = E_q[-log p(x | z_{t1})] with p(x^n = v | z^n = m) proportional to q(m | v) = (1 - eps) t1^{w_v}, in
closed form. The prior term (eps log V per token) is left out as for MD4 (md4.md §2.7).

Estimate of the [t1, 1] integral: t = t1 + (1 - t1) u with u ~ U[0, 1) (antithetic over the batch, as MD4), and the
one-sample integrand is multiplied by 1 - t1, the Jacobian of that change of variable, so the estimate is unbiased.
md4's code leaves the factor out (its diffusion term is 1 / (1 - t1), ~0.1%, high).

Because t >= t1 > 0, gamma and its gradient in w stay finite for every w > 0 (on t in [0, 1) they are not finite at
t = 0 when some w < 1). md4.md's invariant 14 (all w_v = c gives MD4's 'poly<c>' NELBO) holds only in the limit
eps -> 0, t1 -> 0: for eps > 0 MD4 shifts alpha into [eps, 1 - eps], and t1 > 0 replaces the integral over [0, t1)
by recon(t1). With eps = 0, t1 = 0 the two are equal for the same key.

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

T1 = 1e-3  # md4's lower end of the time interval


class TokenSchedule(NamedTuple):
  """alpha_{t,v} = 1 - (1 - eps) t^{w_v}. Times t [..., 1] broadcast against w [V]; results are [..., V]."""

  w: jax.Array  # [V] > 0
  eps: float

  def alpha(self, t: jax.Array) -> jax.Array:
    """eps - (1 - eps) expm1(w log t): no cancellation near t = 1, where alpha -> eps."""
    return self.eps - (1.0 - self.eps) * jnp.expm1(self.w * jnp.log(t))

  def log_one_minus_alpha(self, t: jax.Array) -> jax.Array:
    """log((1 - eps) t^w)."""
    return math.log1p(-self.eps) + self.w * jnp.log(t)

  def weight(self, t: jax.Array) -> jax.Array:
    """gamma_t = alpha'_t / (1 - alpha_t) = -w / t."""
    return -self.w / t

  def log_survival(self, s: jax.Array, t: jax.Array) -> jax.Array:
    """log P(z_s = m | z_t = m, x = v) = log((1 - alpha_s) / (1 - alpha_t)) = w log(s / t) for s <= t; eps cancels."""
    return self.w * jnp.log(s / t)


def init_w_raw(vocab_size: int, power_init: float = 1.0) -> jax.Array:
  """w_raw [V] with softplus(w_raw) = power_init (1.0 = the linear schedule)."""
  if power_init <= 0:
    raise ValueError(f"power_init must be > 0; got {power_init}")
  return jnp.full((vocab_size,), math.log(math.expm1(power_init)), jnp.float32)


def sample_times(key: jax.Array, batch_size: int, antithetic: bool, t1: float) -> jax.Array:
  """t [B] in [t1, 1): t1 + (1 - t1) u with u from `diffusion.sample_times`."""
  return t1 + (1.0 - t1) * diffusion.sample_times(key, batch_size, antithetic)


def _at_data(values: jax.Array, x: jax.Array) -> jax.Array:
  """values [B, *1, V] (or [V]) read at the data tokens x [B, *S] -> [B, *S]."""
  return diffusion.log_prob_of(jnp.broadcast_to(values, x.shape + values.shape[-1:]), x)


def _integrand(gamma_v: jax.Array, x: jax.Array):
  """Per masked token: gamma^T (x0 - mu + x0 x0^T log mu) = gamma_x (1 + log mu_x) - gamma . mu (eq. 12)."""
  def integrand(log_probs):
    return (_at_data(gamma_v, x) * (1.0 + diffusion.log_prob_of(log_probs, x))
            - jnp.sum(gamma_v * jnp.exp(log_probs), axis=-1))
  return integrand


def _log_q(sched: TokenSchedule, t: jax.Array, x: jax.Array, z_t: jax.Array) -> jax.Array:
  """log q(z_t | x) [B] (differentiable in w)."""
  t_v = diffusion.reverse_broadcast(t, x.ndim + 1)  # [B, *1, 1]
  masked = z_t == sched.w.shape[0]
  per_token = jnp.where(masked, _at_data(sched.log_one_minus_alpha(t_v), x),
                        jnp.log(_at_data(sched.alpha(t_v), x)))
  return jnp.sum(per_token, axis=tuple(range(1, x.ndim)))


def reconstruction(x: jax.Array, w: jax.Array, eps: float, t1: float) -> jax.Array:
  """recon(t1) [B] in nats: sum_n (1 - eps) t1^{w_x} (logsumexp_v(w_v log t1) - w_x log t1) (md4.md §2.9).

  A token masked at t1 (probability (1 - eps) t1^{w_x}) costs -log p(x | m), p(v | m) proportional to t1^{w_v};
  an unmasked one costs nothing. 0 for t1 = 0 (the limit).
  """
  if t1 == 0.0:
    return jnp.zeros(x.shape[:1], w.dtype)
  log_t1 = math.log(t1)
  w_x = _at_data(w, x)  # [B, *S]
  per_token = (1.0 - eps) * jnp.exp(w_x * log_t1) * (jax.nn.logsumexp(w * log_t1) - w_x * log_t1)
  return jnp.sum(per_token, axis=tuple(range(1, x.ndim)))


def _check(w: jax.Array, denoise_fn, x: jax.Array, eps: float, t1: float) -> None:
  vocab_size = diffusion.denoiser_vocab_size(denoise_fn, x)
  if w.shape != (vocab_size,):
    raise ValueError(f"w must have shape [V]=({vocab_size},); got {w.shape}")
  if not isinstance(w, jax.core.Tracer) and np.asarray(w).min() <= 0:
    raise ValueError(f"w must be positive (use w = softplus(w_raw)); min is {np.asarray(w).min()}")
  if not 0.0 <= eps < 1.0:
    raise ValueError(f"eps must lie in [0, 1); got {eps}")
  if not 0.0 <= t1 < 1.0:
    raise ValueError(f"t1 must lie in [0, 1); got {t1}")


def _diffusion_term(denoise_fn, key, x, t, sched: TokenSchedule, t1: float):
  """(1 - t1) times the one-sample integrand at t [B], and z_t."""
  t_v = diffusion.reverse_broadcast(t, x.ndim + 1)  # [B, *1, 1]
  alpha_x = _at_data(sched.alpha(t_v), x)  # [B, *S]
  term, z_t = diffusion.diffusion_term(denoise_fn, key, x, t, alpha_x, _integrand(sched.weight(t_v), x))
  return (1.0 - t1) * term, z_t


def nelbo(denoise_fn, key: jax.Array, x: jax.Array, w: jax.Array, eps: float = 1e-4,
          antithetic: bool = True, *, t1: float = T1) -> jax.Array:
  """Per-example GenMD4 NELBO in nats [B]: one draw of t in [t1, 1) and of the masks, plus recon(t1).

  Uses the same key splitting as `diffusion.continuous_nelbo`, so with w = c everywhere, eps = 0 and t1 = 0 it
  returns the same numbers as MD4 with schedule 'poly<c>' and eps = 0 for the same key.
  """
  _check(w, denoise_fn, x, eps, t1)
  key_t, key_mask = jax.random.split(key)
  t = sample_times(key_t, x.shape[0], antithetic, t1)
  term, _ = _diffusion_term(denoise_fn, key_mask, x, t, TokenSchedule(w, eps), t1)
  return term + reconstruction(x, w, eps, t1)


class GenMD4Loss(NamedTuple):
  surrogate: jax.Array  # [] the objective to differentiate (NELBO + RLOO score term)
  nelbo: jax.Array      # [B] per-example NELBO in nats, the number to report


def rloo_loss(denoise_fn, key: jax.Array, x: jax.Array, w: jax.Array, eps: float = 1e-4,
              antithetic: bool = True, *, t1: float = T1) -> GenMD4Loss:
  """2-sample REINFORCE leave-one-out objective (App. I.2).

  Two masks z^1, z^2 at the same t. surrogate = mean_B[ (L1 + L2)/2 + 1/2 sg(L1 - L2)(log q(z^1) - log q(z^2)) ]
  + recon. Its gradient w.r.t. the network is the average pathwise gradient (the score term carries none);
  w.r.t. w it is pathwise (through gamma and the closed-form recon) plus the unbiased score-function term.
  """
  _check(w, denoise_fn, x, eps, t1)
  key_t, key_mask = jax.random.split(key)
  key_1, key_2 = jax.random.split(key_mask)
  t = sample_times(key_t, x.shape[0], antithetic, t1)
  sched = TokenSchedule(w, eps)
  loss_1, z_1 = _diffusion_term(denoise_fn, key_1, x, t, sched, t1)
  loss_2, z_2 = _diffusion_term(denoise_fn, key_2, x, t, sched, t1)
  score = _log_q(sched, t, x, z_1) - _log_q(sched, t, x, z_2)
  nelbo_per_example = 0.5 * (loss_1 + loss_2) + reconstruction(x, w, eps, t1)
  surrogate = jnp.mean(nelbo_per_example + 0.5 * jax.lax.stop_gradient(loss_1 - loss_2) * score)
  return GenMD4Loss(surrogate=surrogate, nelbo=nelbo_per_example)
