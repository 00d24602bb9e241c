"""Sampler configuration: the references' defaults and validation before any compilation.

`default_config(name)` returns an `ml_collections.ConfigDict`; `SamplerConfig.from_config` validates one and
freezes it into a hashable dataclass, the only form the jitted sampler sees.

Defaults (md4.md §3, remdm.md §1.3-1.4):
- 'ancestral' (MD4 Alg. 2) and 'euler' (first-order rate x dt step, MD4 §4): T = 1000 on the cosine grid, linear
  schedule, no top-p, argmax on the leftover masks.
- 'remdm': the paper's best OpenWebText setting, loop with eta = 0.02, t_on = 0.55, t_off = 0.05,
  alpha_on = 0.9, ReMDM top-p 0.9, T = 1024 on the uniform grid (scripts/remdm-loop.sh).
- 'fb' (sigma_t = (alpha_s - alpha_t) / alpha_t, ReMDM Prop. 4.2) and 'dfm' (sigma_t = beta_t (alpha_s -
  alpha_t) / alpha_t with beta_t = A t^0.25 (1 - t)^0.25, A = 10, and DFM step widths, Prop. 4.3 / App. D.1): the
  ReMDM OpenWebText baselines, same T, grid and top-p as 'remdm'.

Exact ReMDM reproduction (a converted MDLM checkpoint sampled as the public ReMDM code samples it, remdm.md §2):
grid = 'remdm', schedule = 'linear', eps = 0 (alpha_t = 1 - t), top_p_rule = 'remdm_sort', num_steps = T, final =
'argmax', cache = True for a model without time conditioning (it changes no sample, only the denoiser calls). The
grid is the reference's float32 linspace(1, 1e-5, T + 1) with its loop phase boundaries (grid.remdm_times).
Today's defaults above are unchanged.
"""

from __future__ import annotations

import dataclasses
import ml_collections

from md4_jax.schedules import make_schedule

NAMES = ("ancestral", "euler", "remdm", "fb", "dfm")
GRIDS = ("uniform", "cosine", "remdm")
TOP_P_RULES = ("remdm", "md4", "remdm_sort")
FINALS = ("argmax", "sample")
STRATEGIES = ("cap", "rescale", "conf", "loop")


def default_config(name: str = "ancestral") -> ml_collections.ConfigDict:
  """A full sampler config with the references' defaults for sampler `name` (see the module docstring)."""
  if name not in NAMES:
    raise ValueError(f"unknown sampler name {name!r}; valid: {', '.join(NAMES)}")
  md4_family = name in ("ancestral", "euler")
  config = ml_collections.ConfigDict()
  config.name = name
  config.num_steps = 1000 if md4_family else 1024
  config.schedule = "linear"          # make_schedule name; the model's schedule
  config.eps = 1e-4                   # the schedule's shift, as the model (md4.md §2.2)
  config.grid = "cosine" if md4_family else "uniform"
  config.top_p = 1.0 if md4_family else 0.9
  config.top_p_rule = "md4" if md4_family else "remdm"
  config.temperature = 1.0
  config.final = "argmax"
  config.cache = False                # True only if the denoiser ignores t (caching, remdm.md §2.3)
  config.dfm_scale = 10.0             # A in beta_t = A t^0.25 (1 - t)^0.25 ('dfm' only)
  config.remdm = ml_collections.ConfigDict()
  config.remdm.strategy = "loop"
  config.remdm.eta = 0.02
  config.remdm.t_on = 0.55
  config.remdm.t_off = 0.05
  config.remdm.alpha_on = 0.9
  config.remdm.t_switch = 1.0         # sigma = 0 for t > t_switch; 1.0 = off
  return config


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """A validated, hashable sampler config (static argument of the jitted loop)."""

  name: str
  num_steps: int
  schedule: str
  eps: float
  grid: str
  top_p: float
  top_p_rule: str
  temperature: float
  final: str
  cache: bool
  dfm_scale: float
  strategy: str
  eta: float
  t_on: float
  t_off: float
  alpha_on: float
  t_switch: float

  def __post_init__(self):
    _check_choice("name", self.name, NAMES)
    if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
      raise ValueError(f"num_steps must be an int >= 1; got {self.num_steps!r}")
    make_schedule(self.schedule, self.eps)  # raises ValueError for a bad name or eps
    _check_choice("grid", self.grid, GRIDS)
    if self.grid == "remdm" and (self.schedule != "linear" or self.eps != 0.0):
      raise ValueError(f"grid='remdm' is ReMDM's alpha_t = 1 - t: it needs schedule='linear' and eps=0; got "
                       f"schedule={self.schedule!r}, eps={self.eps}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must lie in (0, 1] (1.0 = off); got {self.top_p}")
    _check_choice("top_p_rule", self.top_p_rule, TOP_P_RULES)
    if not self.temperature > 0.0:
      raise ValueError(f"temperature must be > 0; got {self.temperature}")
    _check_choice("final", self.final, FINALS)
    if not isinstance(self.cache, bool):
      raise ValueError(f"cache must be a bool (True = denoiser ignores t); got {self.cache!r}")
    if self.name == "dfm":
      if not self.dfm_scale >= 0.0:
        raise ValueError(f"dfm_scale (A in beta_t) must be >= 0; got {self.dfm_scale}")
      if self.grid != "uniform":
        raise ValueError(f"'dfm' sets its own step widths (remdm.md §1.4); grid must be 'uniform', got "
                         f"{self.grid!r}")
    if self.name == "remdm":
      self._check_remdm()

  def _check_remdm(self):
    _check_choice("remdm.strategy", self.strategy, STRATEGIES)
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f"remdm.eta must lie in [0, 1] so that 0 <= sigma_t <= 1 (ReMDM Eq. 7); got {self.eta}")
    if not 0.0 <= self.t_switch <= 1.0:
      raise ValueError(f"remdm.t_switch must lie in [0, 1] (1.0 = off); got {self.t_switch}")
    if self.strategy != "loop":
      return
    if not 0.0 < self.t_off < self.t_on <= 1.0:
      raise ValueError(f"loop needs 0 < remdm.t_off < remdm.t_on <= 1 (phase 3 must unmask what the loop left); "
                       f"got t_off={self.t_off}, t_on={self.t_on}")
    if not 0.0 < self.alpha_on < 1.0:
      raise ValueError(f"remdm.alpha_on must lie in (0, 1); got {self.alpha_on}")
    eta_max = (1.0 - self.alpha_on) / self.alpha_on
    if self.eta > eta_max:
      raise ValueError(f"loop needs remdm.eta <= (1 - alpha_on) / alpha_on = {eta_max:.6g} so the loop posterior "
                       f"is a distribution (ReMDM Eq. 7 at alpha_s = alpha_t = alpha_on); got eta={self.eta}")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> SamplerConfig:
    """Validates `config` (a ConfigDict as from `default_config`); raises ValueError naming the bad field."""
    top = ("name", "num_steps", "schedule", "eps", "grid", "top_p", "top_p_rule", "temperature", "final",
           "cache", "dfm_scale")
    sub = ("strategy", "eta", "t_on", "t_off", "alpha_on", "t_switch")
    missing = [k for k in top if k not in config]
    remdm = config.get("remdm") if "remdm" in config else None
    missing += [f"remdm.{k}" for k in sub if remdm is None or k not in remdm]
    if missing:
      raise ValueError(f"sampler config lacks fields {missing}; start from sampling.default_config(name)")
    values = {k: config[k] for k in top}
    values.update({k: remdm[k] for k in sub})
    for k in ("eps", "top_p", "temperature", "dfm_scale", "eta", "t_on", "t_off", "alpha_on", "t_switch"):
      if isinstance(values[k], bool) or not isinstance(values[k], (int, float)):
        raise ValueError(f"{k} must be a number; got {values[k]!r}")
      values[k] = float(values[k])
    return cls(**values)


def _check_choice(field: str, value, options) -> None:
  if value not in options:
    raise ValueError(f"{field} = {value!r} is not valid; valid: {', '.join(options)}")
