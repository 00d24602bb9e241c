"""Sampler time grids and alpha values, computed once on the host in float64.

- 'uniform': t(i) = (T - i) / T, s(i) = (T - i - 1) / T, i = 0..T-1 (md4.md §3).
- 'cosine': both warped by t <- cos(pi/2 (1 - t)) (MD4 eq. 6), written sin(pi t / 2) so that the end points are
  exactly 0 and 1.
- 'remdm' (remdm.md §2 item 2, for exact reproduction of the public ReMDM code): t(i) = linspace(1, 1e-5, T + 1)[i]
  in float32 as torch computes it, s(i) = t(i) - dt in float32, dt = (1 - 1e-5) / T, alpha = 1 - t (the linear
  schedule, eps = 0); the loop's phases are decided by t(i) alone (phase 1 while t > t_on, phase 3 once t <= t_off),
  so the step that crosses t_on overshoots alpha_on (0.900382 at T = 1024) and the phases take 461 / 512 / 51
  steps at T = 1024. The final noise removal runs the denoiser at t = 1e-5.
- 'dfm': the DFM step widths of remdm.md §1.4, dt = min(1/T, 1 / ((1 + beta_t) / t + beta_t / (1 - t))) with
  beta_t = A t^0.25 (1 - t)^0.25; the beta_t / (1 - t) term is taken as 0 at t = 1, where beta_1 = 0 and nothing
  is unmasked yet. Below t = 1/T the rule would shrink the steps geometrically without reaching 0; one last step
  goes to t = 0 instead (with sigma clipped to its bound, which is ~0 there).
- ReMDM loop (remdm.md §1.3): alpha remapped piecewise, 0 -> alpha_on on t in (t_on, 1], held at alpha_on on
  [t_off, t_on], alpha_on -> 1 on [0, t_off), each piece linear in t, then the schedule's eps shift applied as
  for every sampler. Unlike the reference code, the step that crosses t_on lands exactly on alpha_on.
"""

from __future__ import annotations

import dataclasses
import jax
import numpy as np

from md4_jax.sampling.config import SamplerConfig
from md4_jax.schedules import MaskingSchedule, make_schedule


@dataclasses.dataclass(frozen=True)
class Grid:
  """Per-step float64 arrays, each [T] (T = number of steps; 'dfm' may take more than num_steps)."""

  t: np.ndarray            # step start time, 1 -> ...
  s: np.ndarray            # step end time, ... -> 0
  t_model: np.ndarray      # time given to the denoiser: t, or the schedule time of the loop's alpha_t
  alpha_t: np.ndarray
  alpha_s: np.ndarray
  one_minus_alpha_t: np.ndarray
  one_minus_alpha_s: np.ndarray
  loop_step: np.ndarray    # bool: alpha_s = alpha_t = alpha_on (ReMDM loop phase 2)


def schedule_of(config: SamplerConfig) -> MaskingSchedule:
  return make_schedule(config.schedule, config.eps)


REMDM_T_MIN = 1e-5  # the reference's sampling eps: the grid's last s, and the time of the final noise removal


def final_time(config: SamplerConfig) -> float:
  """The time at which the denoiser fills the masks left after the last step."""
  return float(np.float32(REMDM_T_MIN)) if config.grid == "remdm" else 0.0


def torch_linspace_f32(start: float, end: float, num: int) -> np.ndarray:
  """float32 linspace as torch's kernel computes it: step = (end - start) / (num - 1) in float32, then
  start + step i for the first half and end - step (num - 1 - i) for the second, each a fused multiply-add
  (one rounding; the float64 product of a float32 and a small int is exact)."""
  i = np.arange(num)
  start32, end32 = np.float32(start), np.float32(end)
  step = np.float64(np.float32((end32 - start32) / np.float32(num - 1)))
  first = np.float64(start32) + step * i
  second = np.float64(end32) - step * (num - 1 - i)
  return np.where(i < num // 2, first, second).astype(np.float32)


def remdm_times(num_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """(t, s) of ReMDM's grid, float32 values held in float64 [T] each (see the module docstring)."""
  t = torch_linspace_f32(1.0, REMDM_T_MIN, num_steps + 1)[:-1]
  s = t - np.float32((1.0 - REMDM_T_MIN) / num_steps)
  return t.astype(np.float64), s.astype(np.float64)


def remdm_grid(config: SamplerConfig) -> Grid:
  """Grid 'remdm': alpha = 1 - t, and for the loop the reference's phase rule (see the module docstring)."""
  t, s = remdm_times(config.num_steps)
  alpha_t, alpha_s = 1.0 - t, 1.0 - s
  loop_step = np.zeros(t.shape, bool)
  if config.name == "remdm" and config.strategy == "loop":
    phase1, phase3 = t > config.t_on, t <= config.t_off
    loop_step = ~phase1 & ~phase3
    rise = config.alpha_on / (1.0 - config.t_on)
    fall = (1.0 - config.alpha_on) / config.t_off
    alpha_t = np.where(phase1, (1.0 - t) * rise, np.where(phase3, 1.0 - t * fall, config.alpha_on))
    alpha_s = np.where(phase1, (1.0 - s) * rise, np.where(phase3, 1.0 - s * fall, config.alpha_on))
  return Grid(t, s, t, alpha_t, alpha_s, 1.0 - alpha_t, 1.0 - alpha_s, loop_step)


def step_times(config: SamplerConfig) -> tuple[np.ndarray, np.ndarray]:
  """(t, s), float64 [T] each, decreasing from t = 1 to s = 0 (grids 'uniform' and 'cosine'; 'dfm' widths)."""
  if config.name == "dfm":
    return dfm_times(config.num_steps, config.dfm_scale)
  steps = config.num_steps
  i = np.arange(steps, dtype=np.float64)
  t, s = (steps - i) / steps, (steps - i - 1) / steps
  if config.grid == "cosine":
    t, s = np.sin(0.5 * np.pi * t), np.sin(0.5 * np.pi * s)
  return t, s


def dfm_times(num_steps: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
  """DFM step widths (remdm.md §1.4, Gat et al. 2024 App. D.1); see the module docstring."""
  times = [1.0]
  t = 1.0
  while t > 1.0 / num_steps:
    beta = scale * t**0.25 * (1.0 - t)**0.25
    rate = (1.0 + beta) / t + (beta / (1.0 - t) if t < 1.0 else 0.0)
    t = t - min(1.0 / num_steps, 1.0 / rate)
    times.append(t)
  times.append(0.0)
  times = np.asarray(times)
  return times[:-1], times[1:]


def loop_base_alpha(t: np.ndarray, t_on: float, t_off: float, alpha_on: float) -> np.ndarray:
  """The ReMDM loop's alpha before the eps shift: 0 at t = 1, alpha_on on [t_off, t_on], 1 at t = 0."""
  phase1 = (1.0 - t) * alpha_on / max(1.0 - t_on, 1e-300)
  phase3 = 1.0 - t * (1.0 - alpha_on) / max(t_off, 1e-300)
  return np.where(t > t_on, phase1, np.where(t < t_off, phase3, alpha_on))


def _alphas(schedule: MaskingSchedule, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  with jax.enable_x64(True), jax.ensure_compile_time_eval():
    return np.asarray(schedule.alpha(t)), np.asarray(schedule.one_minus_alpha(t))


def _schedule_time(schedule: MaskingSchedule, base_alpha: np.ndarray) -> np.ndarray:
  """t with the schedule's un-shifted a(t) = base_alpha, by 64 bisection steps (a decreases in t)."""
  lo, hi = np.zeros_like(base_alpha), np.ones_like(base_alpha)
  with jax.enable_x64(True), jax.ensure_compile_time_eval():
    for _ in range(64):
      mid = 0.5 * (lo + hi)
      above = np.asarray(schedule.base(mid)[0]) > base_alpha
      lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
  return 0.5 * (lo + hi)


def make_grid(config: SamplerConfig) -> Grid:
  """The step times and alpha values of `config` (loop remapping included)."""
  if config.grid == "remdm":
    return remdm_grid(config)
  schedule = schedule_of(config)
  t, s = step_times(config)
  if config.name == "remdm" and config.strategy == "loop":
    args = (config.t_on, config.t_off, config.alpha_on)
    base_t, base_s = loop_base_alpha(t, *args), loop_base_alpha(s, *args)
    alpha_t, alpha_s = schedule.shift(base_t), schedule.shift(base_s)
    one_minus_t, one_minus_s = schedule.shift(1.0 - base_t), schedule.shift(1.0 - base_s)
    loop_step = (t <= config.t_on) & (s >= config.t_off)
    t_model = _schedule_time(schedule, base_t)
  else:
    alpha_t, one_minus_t = _alphas(schedule, t)
    alpha_s, one_minus_s = _alphas(schedule, s)
    loop_step = np.zeros(t.shape, bool)
    t_model = t
  return Grid(t, s, t_model, alpha_t, alpha_s, one_minus_t, one_minus_s, loop_step)
