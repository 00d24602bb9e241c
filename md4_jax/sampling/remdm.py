"""ReMDM remasking: the per-step sigma_t of each strategy (ReMDM §4, App. C Alg. 2-3; remdm.md §1.3).

The posterior itself (Eq. 4-6) lives in `ancestral.transition`: ReMDM is the MD4 ancestral step with a remasking
probability sigma_t, and sigma_t = 0 gives it back exactly. FB and DFM are ReMDM with a particular sigma_t
(Prop. 4.2, 4.3). Every sigma_t is clipped to [0, sigma_max], sigma_max = min(1, (1 - alpha_s) / alpha_t) (Eq. 7),
the bound under which both branches of the posterior are distributions:
- cap (Alg. 2):      sigma_t = min(eta, sigma_max)
- rescale (Alg. 2):  sigma_t = eta * sigma_max
- conf (Alg. 2):     sigma_t^l = eta_conf^l * eta * sigma_max with eta_conf = softmax over the example's unmasked
                     tokens of -psi^l, psi^l the (filtered, renormalised) probability with which token l was drawn
                     (the PyTorch reference's softmax(-p); it uses eta = 1, i.e. ignores eta). Masked tokens use
                     sigma = 0, so Thm 3.1's marginals do not hold exactly for conf (remdm.md §1.3).
- loop (Alg. 3):     sigma_t = eta on the steps with alpha_s = alpha_t = alpha_on, 0 elsewhere (as the code: no min
                     with sigma_max; validation ensures eta <= (1 - alpha_on) / alpha_on).
- fb:                sigma_t = (alpha_s - alpha_t) / alpha_t; this exceeds Eq. 7's bound once 2 alpha_s - alpha_t > 1
                     (late steps), where it is clipped.
- dfm:               sigma_t = beta_t (alpha_s - alpha_t) / alpha_t, beta_t = A t^0.25 (1 - t)^0.25.
- switch (Eq. 10):   sigma_t = 0 for t > t_switch, for any strategy.
sigma_t = 1 where alpha_t = 0 (the reference's special case; nothing is unmasked there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from md4_jax.sampling.config import SamplerConfig
from md4_jax.sampling.grid import Grid


def sigma_max(grid: Grid) -> np.ndarray:
  """min(1, (1 - alpha_s) / alpha_t), float64 [T]; 1 where alpha_t = 0 (ReMDM Eq. 7)."""
  safe = np.where(grid.alpha_t > 0.0, grid.alpha_t, 1.0)
  return np.where(grid.alpha_t > 0.0, np.minimum(1.0, grid.one_minus_alpha_s / safe), 1.0)


def step_sigma(config: SamplerConfig, grid: Grid) -> np.ndarray:
  """sigma_t per step, float64 [T]; for 'conf' the base eta * sigma_max that eta_conf^l distributes."""
  if config.name in ("ancestral", "euler"):
    return np.zeros_like(grid.t)
  bound = sigma_max(grid)
  if config.name in ("fb", "dfm"):  # beta_t (alpha_s - alpha_t) / alpha_t, beta_t = 1 for 'fb'
    beta = config.dfm_scale * grid.t**0.25 * (1.0 - grid.t)**0.25 if config.name == "dfm" else 1.0
    safe_alpha_t = np.where(grid.alpha_t > 0.0, grid.alpha_t, 1.0)
    sigma = np.where(grid.alpha_t > 0.0, beta * (grid.alpha_s - grid.alpha_t) / safe_alpha_t, 1.0)
  elif config.strategy == "cap":
    sigma = np.minimum(config.eta, bound)
  elif config.strategy in ("rescale", "conf"):
    sigma = config.eta * bound
  else:  # loop
    sigma = np.where(grid.loop_step, config.eta, 0.0)
  if config.name == "remdm":
    sigma = np.where(grid.t > config.t_switch, 0.0, sigma)
  return np.clip(sigma, 0.0, bound)


def conf_weights(neg_psi: jax.Array) -> jax.Array:
  """eta_conf^l = softmax_l(-psi^l) over each example's remaskable tokens; neg_psi [B, N] is -inf elsewhere.

  Returns [B, N], rows summing to 1, or all 0 where an example has no remaskable token.
  """
  top = jnp.max(neg_psi, axis=-1, keepdims=True)
  e = jnp.exp(neg_psi - jnp.where(jnp.isfinite(top), top, 0.0))
  total = jnp.sum(e, axis=-1, keepdims=True)
  return jnp.where(total > 0.0, e / jnp.where(total > 0.0, total, 1.0), 0.0)
