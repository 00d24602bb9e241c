"""The reverse step of masked diffusion: MD4 ancestral (Alg. 2) with ReMDM's remasking, Euler, and GenMD4.

One position's step, from z_t to z_s (ReMDM Eq. 4-6, md4.md §2.1 eq. 17), with x the denoiser's prediction:
  z_t = m:  token ~ x   w.p. p_unmask = (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t)
            stay m      w.p. p_stay   = (1 - alpha_s - sigma alpha_t) / (1 - alpha_t)
  z_t != m: remask      w.p. sigma,  else keep z_t   (carry-over: x is one-hot at z_t)
sigma = 0 is MD4 ancestral sampling. Coefficients are formed on the host in float64 from alpha_s - alpha_t and
1 - alpha computed without cancellation.

Factorised draw (see categorical.py): whether a position changes state is decided first, then a token is drawn
from x only where one is unmasked. A position's changes form a two-state chain whose per-step probability of
leaving its state is p_unmask (masked) or sigma (unmasked); it is simulated by an exponential clock: the position
holds E ~ Exp(1), loses the hazard h = -log P(stay) each step, and changes state on the step where h >= E left,
then draws a fresh E. By memorylessness this is exactly the per-step Bernoulli, yet needs random numbers only
where something happens. The clock is kept in float32, so each step's probability is exact to ~1e-7 absolute.

Euler (MD4 §4, the first-order discretisation it compares against): the reverse unmasking rate of a masked token
is -alpha'_t / (1 - alpha_t), so p_unmask = min(1, -alpha'_t (t - s) / (1 - alpha_t)).

GenMD4 (md4.md §2.9, App. I.2), with the per-token schedule of its objective, alpha_{t,v} = 1 - (1 - eps) t^{w_v}
(genmd4.TokenSchedule): given z_t = m and x_0 = i, z_s = m w.p. r_i = (1 - alpha_{s,i}) / (1 - alpha_{t,i}) =
(s/t)^{w_i} (eps cancels), else i. With mu = p(x_0 | z_t):
  P(stay m) = sum_i r_i mu_i,   P(z_s = i) = (1 - r_i) mu_i;
with all w_i = c it is the ancestral step of 'poly<c>' with eps = 0. The last step (s = 0) unmasks every position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from md4_jax.genmd4 import TokenSchedule
from md4_jax.sampling.grid import Grid
from md4_jax.schedules import MaskingSchedule


def hazard(p_leave, p_stay):
  """-log p_stay, accurate for tiny p_leave = 1 - p_stay too (inf where p_stay = 0)."""
  return jnp.where(p_leave < 0.5, -jnp.log1p(-jnp.minimum(p_leave, 0.5)), -jnp.log(p_stay))


def host_hazard(p_leave: np.ndarray, p_stay: np.ndarray) -> np.ndarray:
  """`hazard` in float64 on the host, [T]."""
  with jax.enable_x64(True), jax.ensure_compile_time_eval(), np.errstate(divide="ignore"):
    return np.asarray(hazard(jnp.asarray(p_leave), jnp.asarray(p_stay)))


def transition(grid: Grid, sigma_masked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(p_unmask, p_stay) of a masked token, float64 [T], for remasking probability sigma_masked [T]."""
  sigma_alpha_t = sigma_masked * grid.alpha_t
  p_unmask = (grid.alpha_s - grid.alpha_t + sigma_alpha_t) / grid.one_minus_alpha_t
  p_stay = (grid.one_minus_alpha_s - sigma_alpha_t) / grid.one_minus_alpha_t
  return np.clip(p_unmask, 0.0, 1.0), np.clip(p_stay, 0.0, 1.0)


def euler_transition(schedule: MaskingSchedule, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
  """(p_unmask, p_stay) of the Euler step: rate -alpha'_t / (1 - alpha_t) times dt, float64 [T]."""
  with jax.enable_x64(True), jax.ensure_compile_time_eval():
    dalpha = np.asarray(schedule.dalpha(grid.t))
  p_unmask = np.clip(-dalpha * (grid.t - grid.s) / grid.one_minus_alpha_t, 0.0, 1.0)
  return p_unmask, 1.0 - p_unmask


def fire(clock: jax.Array, z: jax.Array, remaskable: jax.Array, mask_id: int, hazard_mask, hazard_unmask):
  """One step of the exponential clocks clock [B, ...] (float32, > 0).

  hazard_mask: scalar or [B, ...] (GenMD4), -log p_stay of masked positions; hazard_unmask: scalar or [B, ...]
  (conf), -log(1 - sigma) of `remaskable` unmasked positions, or None for no remasking.
  Returns (unmask, remask, clock - hazard): disjoint bool [B, ...] masks, unmask only at masks, remask only at
  remaskable tokens; the clocks of the positions that fired must be refreshed.
  """
  is_mask = z == mask_id
  h_unmask = 0.0 if hazard_unmask is None else jnp.where(remaskable, hazard_unmask, 0.0)
  h = jnp.where(is_mask, hazard_mask, h_unmask)
  fired = clock <= h
  return fired & is_mask, fired & ~is_mask, clock - h


def genmd4_transition(log_mu: jax.Array, t: jax.Array, s: jax.Array, w: jax.Array):
  """GenMD4 reverse step of a masked token (App. I.2), for normalised log mu [..., V] and exponents w [V].

  Returns the hazard -log P(stay m) [...] and the log-weights log((1 - r_v) mu_v) [..., V] of the unmasked token,
  with log r = genmd4.TokenSchedule.log_survival(s, t) and 1 - r = -expm1(log r) without cancellation.
  """
  log_r = TokenSchedule(w, 0.0).log_survival(s, t)  # [V]; eps does not enter r
  one_minus_r = -jnp.expm1(log_r)
  mu = jnp.exp(log_mu)
  p_stay = jnp.sum(mu * jnp.exp(log_r), axis=-1)
  p_unmask = jnp.sum(mu * one_minus_r, axis=-1)
  return hazard(p_unmask, p_stay), log_mu + jnp.log(one_minus_r)
