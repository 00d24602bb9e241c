"""The exact ReMDM reproduction setting (sampling/config.py; remdm.md §2): grid 'remdm' (the reference's float32
time grid, loop phase rule and overshoot, final noise removal at t = 1e-5) and top_p_rule 'remdm_sort' (ties cut
in sort order)."""

import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax import sampling
from md4_jax.sampling import categorical, grid as grid_lib, loop
from test_sampling_oracle import P1, config_of, single_position_frequencies, SINGLE
from test_sampling_oracle import test_oracle_samples_reproduce_p as check_oracle_samples

EXACT = {"grid": "remdm", "eps": 0.0}


def exact_grid(num_steps, **overrides):
  return grid_lib.make_grid(sampling.validate_config(config_of("remdm", num_steps=num_steps, **EXACT, **overrides)))


def test_loop_phases_and_overshoot_are_the_references():
  """remdm.md §1.3 / mdlm_dit.md: at T = 1024 the phases take 461 / 512 / 51 steps and the step crossing t_on
  ends at alpha_s = 0.900382 (not 0.9); alpha_t = 0 at the first step, the last s is 1e-5."""
  grid = exact_grid(1024)
  phase1, phase3 = grid.t > 0.55, grid.t <= 0.05
  assert (phase1.sum(), grid.loop_step.sum(), phase3.sum()) == (461, 512, 51)
  assert not np.any(grid.loop_step & (phase1 | phase3))
  assert grid.alpha_s[460] == pytest.approx(0.900382, abs=1e-6) and grid.alpha_t[461] == 0.9
  np.testing.assert_array_equal(grid.alpha_t[grid.loop_step], 0.9)
  np.testing.assert_array_equal(grid.alpha_s[grid.loop_step], 0.9)
  assert grid.alpha_t[0] == 0.0 and grid.s[-1] == pytest.approx(1e-5, rel=1e-3)
  assert grid.alpha_s[-1] == pytest.approx(1 - 1e-5 * 0.1 / 0.05, abs=1e-9)  # phase 3: 1 - s (1 - a_on) / t_off
  np.testing.assert_array_equal(grid.t_model, grid.t)


def test_mdlm_grid_is_one_minus_t_and_the_final_step_runs_at_t_min():
  grid = exact_grid(64, **{"remdm.strategy": "cap"})
  np.testing.assert_array_equal(grid.alpha_t, 1.0 - grid.t)
  np.testing.assert_allclose(np.diff(grid.t), -(1 - 1e-5) / 64, rtol=1e-5)
  frozen = sampling.validate_config(config_of("remdm", num_steps=64, **EXACT))
  plan = loop.make_plan(frozen)
  assert loop.make_static(frozen, plan, 5, 10, False).t_final == np.float32(1e-5)
  default = sampling.validate_config(config_of("remdm", num_steps=64))
  assert loop.make_static(default, loop.make_plan(default), 5, 10, False).t_final == 0.0


def test_grid_is_torch_linspace():
  torch = pytest.importorskip("torch")
  for steps in (7, 1024, 4096):
    expected = torch.linspace(1, 1e-5, steps + 1).numpy()
    np.testing.assert_array_equal(grid_lib.torch_linspace_f32(1.0, 1e-5, steps + 1), expected)


@pytest.mark.parametrize("overrides", [{"eps": 1e-4}, {"schedule": "cosine", "eps": 0.0}])
def test_remdm_grid_needs_the_linear_schedule_without_eps(overrides):
  config = config_of("remdm", grid="remdm", **overrides)
  with pytest.raises(ValueError, match="grid='remdm' is ReMDM's alpha_t = 1 - t"):
    sampling.validate_config(config)


def test_sort_rule_cuts_ties_in_sort_order():
  """A tie group crossing p is cut after the tokens that fit (smaller ids first), unlike 'remdm', which keeps or
  drops a group whole; otherwise both keep the prefix with cumulative mass <= p, and always the top token."""
  tied = jnp.log(jnp.array([[0.1, 0.3, 0.3, 0.3], [0.3, 0.3, 0.2, 0.2]]))
  for p, kept in [(0.65, [[0, 1, 1, 0], [1, 1, 0, 0]]), (0.2, [[0, 1, 0, 0], [1, 0, 0, 0]]),
                  (0.85, [[0, 1, 1, 0], [1, 1, 1, 0]])]:
    out = categorical.top_p_filter(tied, p, "remdm_sort")
    np.testing.assert_array_equal(np.isfinite(out), np.array(kept, bool))
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0, rtol=1e-6)
  assert np.isfinite(categorical.top_p_filter(tied, 0.65, "remdm")[0]).sum() == 3  # the whole top group


@pytest.mark.parametrize("overrides", [{}, {"remdm.strategy": "cap", "remdm.eta": 0.5},
                                       {"remdm.strategy": "loop", "remdm.eta": 0.1}])
def test_single_position_is_exact_on_the_remdm_grid(overrides):
  """md4.md §7 item 19 on grid 'remdm' (whose last s is 1e-5, so the final argmax fills ~1e-5 of the runs). T = 64:
  as in the reference, the loop has no phase 3 when no grid time is <= t_off (T = 8), and leaves 1 - alpha_on masked
  for the final argmax."""
  name = "remdm" if overrides else "ancestral"
  freq = single_position_frequencies(config_of(name, num_steps=64, **EXACT, **overrides))
  np.testing.assert_array_less(np.abs(freq - P1), 5 * np.sqrt(P1 * (1 - P1) / SINGLE))


def test_top_p_sort_rule_in_a_run():
  """Single-position runs with top-p 0.95 by 'remdm_sort' keep {0, 1} of P1 = [0.6, 0.3, 0.1] (cum 0.9 <= 0.95)."""
  freq = single_position_frequencies(config_of("remdm", num_steps=64, top_p=0.95, top_p_rule="remdm_sort", **EXACT))
  expected = np.array([2 / 3, 1 / 3, 0.0])
  np.testing.assert_array_less(np.abs(freq - expected), 5 * np.sqrt(expected * (1 - expected) / SINGLE) + 1e-9)


def test_oracle_samples_reproduce_p_with_the_exact_loop_setting():
  """The exact setting (loop, eta 0.02, T = 1000 on grid 'remdm') with the exact denoiser: TV <= 0.02 and the mask
  counts follow the grid's 1 - alpha_s (the overshoot included) within Monte-Carlo error."""
  check_oracle_samples("remdm", {"remdm.strategy": "loop", "remdm.eta": 0.02, "top_p_rule": "remdm_sort", **EXACT})


@pytest.mark.parametrize("p", [0.3137, 0.9137, 0.05])
def test_sort_rule_matches_a_transcription_of_the_reference_on_rows_with_many_ties(p):
  """ReMDM's rule written out (stable descending sort, float64 cumsum <= p, the first always kept) on rows whose
  probabilities take 4 values (large tie groups), against the sort-free filter."""
  rng = np.random.default_rng(int(p * 1e4))
  weights = rng.integers(1, 5, (16, 300)).astype(np.float64)
  weights[:4, :] = 2.0  # one tie group filling the row: the top group crosses p
  probs = weights / weights.sum(-1, keepdims=True)
  expected = np.zeros(probs.shape, bool)
  for row in range(len(probs)):
    order = np.argsort(-probs[row], kind="stable")
    count = max(1, int(np.sum(np.cumsum(probs[row, order]) <= p)))
    expected[row, order[:count]] = True
  out = np.asarray(categorical.top_p_filter(jnp.log(jnp.asarray(probs, jnp.float32)), p, "remdm_sort"))
  np.testing.assert_array_equal(np.isfinite(out), expected)
