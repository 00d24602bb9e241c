"""Masking schedules alpha_t (MD4 paper §2, Table 4): pure functions of jax arrays.

alpha_t is the probability that a token is still unmasked at time t (t=0 data, t=1 all masked).
Every schedule is a base a(t) with a(0)=1, a(1)=0, shifted as (MD4 App. J.1)

    alpha(t) = (1 - 2 eps) a(t) + eps,   so alpha(0) = 1 - eps, alpha(1) = eps.

The continuous-time loss weight is weight(t) = dalpha(t) / (1 - alpha(t)) (negative).
`1 - alpha` is computed from a closed form of 1 - a(t), never as a difference, so the weight stays
accurate near t = 0 where 1 - alpha ~ eps.
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
  half_pi = 0.5 * math.pi
  return (1.0 - jnp.cos(half_pi * (1.0 - t)), jnp.cos(half_pi * (1.0 - t)),
          -half_pi * jnp.sin(half_pi * (1.0 - t)))


def poly_base(t, k):
  """a(t) = 1 - t^k. `k` may be a scalar or an array broadcastable against t (GenMD4's w)."""
  t_k = jnp.power(t, k)
  # k t^(k-1) written as k t^k / t would be 0/0 at t=0; power handles k-1 < 0 as +inf there.
  return 1.0 - t_k, t_k, -k * jnp.power(t, k - 1.0)


def geometric_base(t, beta_min, beta_max):
  """Normalised geometric schedule: exp(-beta_min^(1-t) beta_max^t) rescaled to a(0)=1, a(1)=0."""
  log_ratio = math.log(beta_max / beta_min)
  g = beta_min * jnp.exp(t * log_ratio)  # beta_min^(1-t) beta_max^t
  z = math.exp(-beta_min) - math.exp(-beta_max)
  exp_neg_g = jnp.exp(-g)
  a = (exp_neg_g - math.exp(-beta_max)) / z
  one_minus_a = -math.exp(-beta_min) * jnp.expm1(beta_min - g) / z
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
    return _BASES[self.name](t, *self.params)

  def alpha(self, t: jax.Array) -> jax.Array:
    """alpha(t), same shape as t."""
    check_times(t)
    a, _, _ = self.base(jnp.asarray(t))
    return (1.0 - 2.0 * self.eps) * a + self.eps

  def one_minus_alpha(self, t: jax.Array) -> jax.Array:
    """1 - alpha(t) without cancellation."""
    check_times(t)
    _, one_minus_a, _ = self.base(jnp.asarray(t))
    return (1.0 - 2.0 * self.eps) * one_minus_a + self.eps

  def dalpha(self, t: jax.Array) -> jax.Array:
    """d alpha / dt, same shape as t (<= 0)."""
    check_times(t)
    _, _, da = self.base(jnp.asarray(t))
    return (1.0 - 2.0 * self.eps) * da

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
  if name == "linear":
    return MaskingSchedule("linear", eps)
  if name == "cosine":
    return MaskingSchedule("cosine", eps)
  if name == "geometric":
    if not 0.0 < beta_min < beta_max:
      raise ValueError(f"geometric needs 0 < beta_min < beta_max; got {beta_min}, {beta_max}")
    return MaskingSchedule("geometric", eps, (float(beta_min), float(beta_max)))
  match = _POLY.match(name) if isinstance(name, str) else None
  if match and float(match.group(1)) > 0:
    k = float(match.group(1))
    return MaskingSchedule("poly", eps, (k,))
  raise ValueError(f"unknown masking schedule {name!r}; valid: {', '.join(VALID_NAMES)}")
