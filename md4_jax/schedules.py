"""Masking schedules alpha_t (MD4 paper §2, Table 4): pure functions of jax arrays.

alpha_t is the probability that a token is still unmasked at time t (t=0 data, t=1 all masked).
Every schedule is a base a(t) with a(0)=1, a(1)=0, shifted as (MD4 App. J.1)

    alpha(t) = (1 - 2 eps) a(t) + eps,   so alpha(0) = 1 - eps, alpha(1) = eps.

The continuous-time loss weight is weight(t) = dalpha(t) / (1 - alpha(t)) (negative).
`1 - alpha` is computed from a closed form of 1 - a(t), never as a difference, and a(t) near t = 1 likewise, so
alpha, 1 - alpha, alpha' and the weight keep float32 accuracy at both ends (tests/test_schedules.py holds them to
float64 references at t = 1e-7 ... 1 - 1e-6).
"""

from __future__ import annotations

import dataclasses
import math
import re
import jax
import jax.numpy as jnp
import numpy as np

VALID_NAMES = ("linear", "cosine", "poly<k> (k > 0, e.g. poly3)", "geometric")


def check_times(t) -> None:
  """Raises ValueError if a concrete t lies outside [0, 1]; traced values are not checked."""
  if isinstance(t, jax.core.Tracer):
    return
  t = np.asarray(t)
  if t.size and (not np.all(np.isfinite(t)) or t.min() < 0.0 or t.max() > 1.0):
    raise ValueError(f"times must lie in [0, 1]; got values in [{t.min()}, {t.max()}]")


def linear_base(t):
  return 1.0 - t, t, -jnp.ones_like(t)


def cosine_base(t):
  """a(t) = 1 - cos(pi/2 (1 - t)), written 2 sin^2(pi/4 (1 - t)) and 1 - a = sin(pi/2 t): no cancellation at either
  end (in float32, 1 - cos(pi/2 (1 - t)) keeps ~6e-4 relative accuracy at t = 1e-6; sin(pi/2 t) is exact there)."""
  half_pi = 0.5 * math.pi
  return (2.0 * jnp.square(jnp.sin(0.5 * half_pi * (1.0 - t))), jnp.sin(half_pi * t),
          -half_pi * jnp.sin(half_pi * (1.0 - t)))


def poly_base(t, k):
  """a(t) = 1 - t^k = -expm1(k log t) (no cancellation near t = 1). `k` is a scalar or an array broadcastable
  against t."""
  t_k = jnp.power(t, k)
  # k t^(k-1) written as k t^k / t would be 0/0 at t=0; power handles k-1 < 0 as +inf there.
  return -jnp.expm1(k * jnp.log(t)), t_k, -k * jnp.power(t, k - 1.0)


def geometric_base(t, beta_min, beta_max):
  """Normalised geometric schedule: exp(-g) with g = beta_min^(1-t) beta_max^t, rescaled to a(0)=1, a(1)=0.

  g - beta_min = beta_min expm1(t L) and beta_max - g = -beta_max expm1((t - 1) L), L = log(beta_max / beta_min),
  so 1 - a (near t = 0) and a, exp(-g) (near t = 1) are formed from small differences computed directly.
  """
  log_ratio = math.log(beta_max / beta_min)
  z = math.exp(-beta_min) - math.exp(-beta_max)
  g_minus_min = beta_min * jnp.expm1(t * log_ratio)
  max_minus_g = -beta_max * jnp.expm1((t - 1.0) * log_ratio)
  near_one = max_minus_g < beta_max - 1.0  # g > 1
  g = jnp.where(near_one, beta_max - max_minus_g, beta_min + g_minus_min)
  one_minus_a = -math.exp(-beta_min) * jnp.expm1(-g_minus_min) / z
  a = jnp.where(near_one, math.exp(-beta_max) * jnp.expm1(max_minus_g) / z, 1.0 - one_minus_a)
  exp_neg_g = jnp.where(near_one, math.exp(-beta_max) * jnp.exp(max_minus_g),
                        math.exp(-beta_min) * jnp.exp(-g_minus_min))
  da = -g * log_ratio * exp_neg_g / z
  return a, one_minus_a, da


# name -> base(t, *params) returning (a(t), 1 - a(t), a'(t)), each the shape of t.
_BASES = {"linear": linear_base, "cosine": cosine_base, "poly": poly_base,
          "geometric": geometric_base}


@dataclasses.dataclass(frozen=True)
class MaskingSchedule:
  """A shifted masking schedule. Hashable, so it can be a static argument of jit."""

  name: str          # 'linear' | 'cosine' | 'poly' | 'geometric'
  eps: float
  params: tuple = ()  # (k,) for poly, (beta_min, beta_max) for geometric

  def base(self, t: jax.Array):
    """(a(t), 1 - a(t), a'(t)) of the un-shifted base, each the shape of t (checked to lie in [0, 1])."""
    check_times(t)
    return _BASES[self.name](jnp.asarray(t), *self.params)

  def shift(self, a: jax.Array) -> jax.Array:
    """(1 - 2 eps) a + eps: alpha from a(t), or 1 - alpha from 1 - a(t)."""
    return (1.0 - 2.0 * self.eps) * a + self.eps

  def alpha(self, t: jax.Array) -> jax.Array:
    """alpha(t), same shape as t."""
    return self.shift(self.base(t)[0])

  def one_minus_alpha(self, t: jax.Array) -> jax.Array:
    """1 - alpha(t) without cancellation."""
    return self.shift(self.base(t)[1])

  def dalpha(self, t: jax.Array) -> jax.Array:
    """d alpha / dt, same shape as t (<= 0)."""
    return (1.0 - 2.0 * self.eps) * self.base(t)[2]

  def weight(self, t: jax.Array) -> jax.Array:
    """dalpha(t) / (1 - alpha(t)): the continuous-time ELBO weight (MD4 eq. 4), <= 0."""
    return self.dalpha(t) / self.one_minus_alpha(t)


_POLY = re.compile(r"^poly(\d+(\.\d*)?|\.\d+)$")


def make_schedule(name: str, eps: float = 1e-4, *, beta_min: float = 1e-5,
                  beta_max: float = 20.0) -> MaskingSchedule:
  """Builds a schedule by name: 'linear', 'cosine', 'poly<k>' (k any positive float), 'geometric'.

  `beta_min`, `beta_max` are the geometric schedule's two rates (MD4 Table 4), used only by it.
  """
  if not 0.0 <= eps < 0.5:
    raise ValueError(f"eps must lie in [0, 0.5); got {eps}")
  if name in ("linear", "cosine"):
    return MaskingSchedule(name, eps)
  if name == "geometric":
    if not 0.0 < beta_min < beta_max:
      raise ValueError(f"geometric needs 0 < beta_min < beta_max; got {beta_min}, {beta_max}")
    return MaskingSchedule("geometric", eps, (float(beta_min), float(beta_max)))
  match = _POLY.match(name) if isinstance(name, str) else None
  if match and float(match.group(1)) > 0:
    return MaskingSchedule("poly", eps, (float(match.group(1)),))
  raise ValueError(f"unknown masking schedule {name!r}; valid: {', '.join(VALID_NAMES)}")
