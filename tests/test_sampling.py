"""Sampler building blocks against exact answers: configs, grids, sigma schedules, posteriors, top-p, draws.

Items of remdm.md §6 (1-6, 10, 11, 13) and md4.md §7 (4, 18, 20) that do not need a full sampling run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from md4_jax import sampling
from md4_jax.sampling import ancestral, categorical, grid as grid_lib, loop, remdm
from md4_jax.schedules import make_schedule


def frozen(sampler, **overrides):
  """The validated default config of `sampler` with overrides {'field' or 'remdm.field': value}."""
  config = sampling.default_config(sampler).to_dict()
  for path, value in overrides.items():
    node = config
    *parents, leaf = path.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return sampling.validate_config(ml_collections.ConfigDict(config))


# Configs ------------------------------------------------------------------------------------------------------


def test_defaults_are_the_references():
  for name in sampling.config.NAMES:
    sampling.validate_config(sampling.default_config(name))
  md4 = sampling.default_config("ancestral")
  assert (md4.num_steps, md4.grid, md4.top_p, md4.final) == (1000, "cosine", 1.0, "argmax")
  c = sampling.default_config("remdm")
  assert (c.remdm.strategy, c.remdm.eta, c.remdm.t_on, c.remdm.t_off, c.remdm.alpha_on) == (
      "loop", 0.02, 0.55, 0.05, 0.9)
  assert (c.top_p, c.top_p_rule, c.num_steps, c.grid) == (0.9, "remdm", 1024, "uniform")
  assert sampling.default_config("dfm").dfm_scale == 10.0


@pytest.mark.parametrize("name, path, value, field", [
    ("ancestral", "name", "mean", "name"),
    ("ancestral", "num_steps", 0, "num_steps"),
    ("ancestral", "num_steps", 2.5, "num_steps"),
    ("ancestral", "schedule", "cosin", "masking schedule"),
    ("ancestral", "eps", 0.5, "eps"),
    ("ancestral", "grid", "log", "grid"),
    ("ancestral", "top_p", 0.0, "top_p"),
    ("ancestral", "top_p", 1.2, "top_p"),
    ("ancestral", "top_p_rule", "hf", "top_p_rule"),
    ("ancestral", "temperature", 0.0, "temperature"),
    ("ancestral", "final", "mode", "final"),
    ("ancestral", "cache", 1, "cache"),
    ("dfm", "grid", "cosine", "grid"),
    ("remdm", "remdm.strategy", "switch", "remdm.strategy"),
    ("remdm", "remdm.eta", -0.1, "remdm.eta"),
    ("remdm", "remdm.eta", 1.5, "remdm.eta"),
    ("remdm", "remdm.eta", 0.2, "(1 - alpha_on) / alpha_on"),
    ("remdm", "remdm.t_off", 0.6, "t_off"),
    ("remdm", "remdm.t_off", 0.0, "t_off"),
    ("remdm", "remdm.alpha_on", 1.0, "alpha_on"),
    ("remdm", "remdm.t_switch", 1.5, "t_switch"),
])
def test_invalid_config_raises_naming_the_field(name, path, value, field):
  with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
    frozen(name, **{path: value})


def test_missing_field_and_invalid_run_raise_before_compiling():
  config = sampling.default_config("ancestral")
  del config.top_p
  with pytest.raises(ValueError, match="top_p"):
    sampling.validate_config(config)

  def denoise_fn(z, t):
    raise AssertionError("the denoiser must not be traced for an invalid config")

  bad = sampling.default_config("remdm")
  bad.remdm.eta = 0.5
  with pytest.raises(ValueError, match="eta"):
    sampling.sample(denoise_fn, jax.random.key(0), jnp.full((2, 4), 3), bad)
  with pytest.raises(ValueError, match="genmd4_w"):
    sampling.sample(lambda z, t: jnp.zeros(z.shape + (3,)), jax.random.key(0), jnp.full((2, 4), 3),
                    sampling.default_config("remdm"), genmd4_w=jnp.ones(3))
  with pytest.raises(ValueError, match="z_init ids"):
    sampling.sample(lambda z, t: jnp.zeros(z.shape + (3,)), jax.random.key(0), jnp.full((2, 4), 4),
                    sampling.default_config("ancestral"))


# Grids -------------------------------------------------------------------------------------------------------


def test_uniform_grid():
  g = grid_lib.make_grid(frozen("remdm", **{"remdm.strategy": "cap", "num_steps": 16}))
  assert g.t.shape == (16,) and g.t[0] == 1.0 and g.s[-1] == 0.0
  np.testing.assert_array_equal(g.s[:-1], g.t[1:])
  np.testing.assert_allclose(g.t - g.s, 1 / 16, rtol=1e-12)
  assert np.all(g.alpha_s > g.alpha_t)  # alpha_s = alpha_t only in the loop
  np.testing.assert_allclose(g.alpha_t + g.one_minus_alpha_t, 1.0, atol=1e-15)


def test_cosine_grid_with_linear_schedule_is_uniform_grid_with_cosine_schedule():
  """md4.md §7 item 4."""
  a = grid_lib.make_grid(frozen("ancestral", num_steps=100, schedule="linear", grid="cosine"))
  b = grid_lib.make_grid(frozen("ancestral", num_steps=100, schedule="cosine", grid="uniform"))
  np.testing.assert_allclose(a.alpha_t, b.alpha_t, atol=1e-12)
  np.testing.assert_allclose(a.alpha_s, b.alpha_s, atol=1e-12)


def test_loop_grid():
  """remdm.md §6 item 6: alpha held at alpha_on, continuity at t_on / t_off, end points, phase lengths."""
  config = frozen("remdm", num_steps=1000)
  g = grid_lib.make_grid(config)
  eps = config.eps
  alpha_on = (1 - 2 * eps) * 0.9 + eps
  np.testing.assert_allclose(g.alpha_t[g.loop_step], alpha_on, rtol=1e-15)
  np.testing.assert_array_equal(g.alpha_s[g.loop_step], g.alpha_t[g.loop_step])
  np.testing.assert_array_equal(g.alpha_s == g.alpha_t, g.loop_step)  # alpha_s = alpha_t only in the loop
  np.testing.assert_allclose(g.alpha_s[:-1], g.alpha_t[1:], rtol=1e-15)  # continuous across t_on and t_off
  assert g.alpha_t[0] == pytest.approx(eps) and g.alpha_s[-1] == pytest.approx(1 - eps)
  phase1, phase2 = np.sum(g.t > 0.55), np.sum(g.loop_step)
  phase3 = 1000 - phase1 - phase2
  assert abs(phase1 - 450) <= 1 and abs(phase2 - 500) <= 1 and abs(phase3 - 50) <= 1
  # The denoiser is told the schedule time at which the model's alpha equals the loop's alpha.
  schedule = make_schedule(config.schedule, eps)
  with jax.enable_x64(True):
    np.testing.assert_allclose(np.asarray(schedule.alpha(g.t_model)), g.alpha_t, atol=1e-12)


def test_dfm_grid():
  g = grid_lib.make_grid(frozen("dfm", num_steps=100))
  assert g.t[0] == 1.0 and g.s[-1] == 0.0 and len(g.t) > 100
  assert np.all(g.t - g.s > 0) and np.all(g.t - g.s <= 1 / 100 + 1e-15)
  np.testing.assert_array_equal(g.s[:-1], g.t[1:])


# Sigma and the posterior -------------------------------------------------------------------------------------

ALL_SIGMAS = [("remdm", {"remdm.strategy": s, "remdm.eta": e}) for s, e in
              [("cap", 0.05), ("rescale", 0.5), ("conf", 1.0), ("loop", 0.1)]] + [
    ("remdm", {"remdm.strategy": "cap", "remdm.eta": 0.3, "remdm.t_switch": 0.4}), ("fb", {}), ("dfm", {}),
    ("ancestral", {}), ("euler", {})]


@pytest.mark.parametrize("eps", [0.0, 1e-4])
@pytest.mark.parametrize("name, overrides", ALL_SIGMAS)
def test_sigma_bounds_and_valid_posterior(name, overrides, eps):
  """remdm.md §6 items 2 and 3, including alpha_t = 0 and alpha_s = 1 (eps = 0)."""
  config = frozen(name, num_steps=200, eps=eps, **overrides)
  g = grid_lib.make_grid(config)
  sigma = remdm.step_sigma(config, g)
  bound = remdm.sigma_max(g)
  assert np.all(sigma >= 0) and np.all(sigma <= bound)
  plan = loop.make_plan(config)
  p_unmask, p_stay = (ancestral.euler_transition(grid_lib.schedule_of(config), g) if name == "euler" else
                      ancestral.transition(g, 0 * sigma if config.strategy == "conf" else sigma))
  assert np.all((p_unmask >= 0) & (p_unmask <= 1) & (p_stay >= 0) & (p_stay <= 1))
  np.testing.assert_allclose(p_unmask + p_stay, 1.0, atol=1e-12)
  with np.errstate(divide="ignore"):  # the hazards are -log P(stay), float32
    np.testing.assert_allclose(plan.hazard_mask, -np.log(p_stay), rtol=1e-6)
    np.testing.assert_allclose(plan.hazard_unmask, -np.log1p(-sigma), rtol=1e-6)


def test_sigma_strategies():
  """remdm.md §1.3 / §6 item 3: cap, rescale, switch, loop, fb, dfm."""
  base = dict(num_steps=200)
  g = grid_lib.make_grid(frozen("remdm", **base, **{"remdm.strategy": "cap"}))
  bound = remdm.sigma_max(g)
  d_alpha = g.alpha_s - g.alpha_t
  cap = remdm.step_sigma(frozen("remdm", **base, **{"remdm.strategy": "cap", "remdm.eta": 0.3}), g)
  np.testing.assert_allclose(cap, np.minimum(0.3, bound))
  rescale = remdm.step_sigma(frozen("remdm", **base, **{"remdm.strategy": "rescale", "remdm.eta": 0.3}), g)
  np.testing.assert_allclose(rescale, 0.3 * bound)
  switch = remdm.step_sigma(frozen("remdm", **base, **{"remdm.strategy": "cap", "remdm.eta": 0.3,
                                                       "remdm.t_switch": 0.4}), g)
  np.testing.assert_array_equal(switch, np.where(g.t > 0.4, 0.0, cap))
  fb = remdm.step_sigma(frozen("fb", **base), g)
  ok = d_alpha / g.alpha_t <= bound
  np.testing.assert_allclose(fb[ok], (d_alpha / g.alpha_t)[ok])
  assert ok.mean() > 0.5 and np.all(fb[~ok] == bound[~ok])  # FB leaves Eq. 7's bound only on late steps
  loop_config = frozen("remdm", **base)
  loop_grid = grid_lib.make_grid(loop_config)
  np.testing.assert_array_equal(remdm.step_sigma(loop_config, loop_grid), np.where(loop_grid.loop_step, 0.02, 0))


def test_dfm_unmask_coefficient():
  """ReMDM Prop. 4.3: DFM unmasks with (1 + beta)(alpha_s - alpha_t) / (1 - alpha_t)."""
  config = frozen("dfm", num_steps=100)
  g = grid_lib.make_grid(config)
  sigma = remdm.step_sigma(config, g)
  beta = 10 * g.t**0.25 * (1 - g.t)**0.25
  unclipped = np.isclose(sigma, beta * (g.alpha_s - g.alpha_t) / g.alpha_t, rtol=1e-12)
  assert unclipped.mean() > 0.9
  p_unmask, _ = ancestral.transition(g, sigma)
  expected = (1 + beta) * (g.alpha_s - g.alpha_t) / g.one_minus_alpha_t
  np.testing.assert_allclose(p_unmask[unclipped], expected[unclipped], rtol=1e-10)


@pytest.mark.parametrize("name, overrides", [o for o in ALL_SIGMAS if o[1].get("remdm.strategy") != "conf"])
def test_marginals_are_preserved_exactly(name, overrides):
  """ReMDM Thm 3.1 / remdm.md §6 item 4: the exact mask-probability chain gives 1 - alpha_s at every step."""
  config = frozen(name, num_steps=300, eps=0.0, **overrides)
  g = grid_lib.make_grid(config)
  sigma = remdm.step_sigma(config, g)
  p_unmask, p_stay = ancestral.transition(g, sigma)
  masked = 1.0 - g.alpha_t[0]
  for i in range(len(g.t)):
    masked = masked * p_stay[i] + (1 - masked) * sigma[i]
    assert masked == pytest.approx(g.one_minus_alpha_s[i], abs=1e-12)


def test_predictor_corrector_identity():
  """ReMDM Thm 4.1: MDLM predictor then corrector (11) equals the ReMDM posterior for sigma <= (1-a_s)/a_s."""
  g = grid_lib.make_grid(frozen("ancestral", num_steps=50, eps=0.0, grid="uniform"))
  rng = np.random.default_rng(0)
  limit = np.minimum(1.0, np.where(g.alpha_s > 0, g.one_minus_alpha_s / np.maximum(g.alpha_s, 1e-300), 1.0))
  sigma = rng.uniform(0, 1, g.t.shape) * np.minimum(limit, remdm.sigma_max(g))
  p_unmask, _ = ancestral.transition(g, sigma)
  predicted = (g.alpha_s - g.alpha_t) / g.one_minus_alpha_t
  ok = g.one_minus_alpha_s > 0
  composed = predicted * (1 - sigma) + (1 - predicted) * sigma * g.alpha_s / np.where(ok, g.one_minus_alpha_s, 1)
  np.testing.assert_allclose(p_unmask[ok], composed[ok], rtol=1e-12)


def test_euler_is_first_order_close_to_ancestral():
  """Euler's rate x dt step differs from the exact ancestral step by O(dt^2) per step."""
  for steps in (100, 1000):
    config = frozen("euler", num_steps=steps, schedule="cosine", grid="uniform")
    g = grid_lib.make_grid(config)
    p_euler, _ = ancestral.euler_transition(grid_lib.schedule_of(config), g)
    p_ancestral, _ = ancestral.transition(g, np.zeros_like(g.t))
    assert np.max(np.abs(p_euler - p_ancestral)) < 2.0 / steps**2


def test_genmd4_transition_reduces_to_poly():
  """md4.md §2.9 with the objective's schedule 1 - alpha_{t,v} = (1 - eps) t^{w_v}: r_i = (s/t)^{w_i}, any eps; all
  w = c gives the ancestral step of poly<c> with eps = 0."""
  log_mu = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (4, 5)))
  t, s = jnp.float32(0.7), jnp.float32(0.6)
  hazard, log_w = ancestral.genmd4_transition(log_mu, t, s, jnp.full((5,), 2.0))
  with jax.enable_x64(True):
    schedule = make_schedule("poly2", 0.0)
    p_stay = float(schedule.one_minus_alpha(0.6) / schedule.one_minus_alpha(0.7))
  np.testing.assert_allclose(np.exp(-np.asarray(hazard)), p_stay, rtol=1e-5)
  w = np.array([0.5, 1.0, 2.0, 3.0, 4.0])
  hazard, log_w = ancestral.genmd4_transition(log_mu, t, s, jnp.asarray(w, jnp.float32))
  r = (0.6 / 0.7) ** w
  mu = np.exp(np.asarray(log_mu, np.float64))
  np.testing.assert_allclose(np.exp(-np.asarray(hazard)), mu @ r, rtol=1e-5)
  np.testing.assert_allclose(np.exp(np.asarray(log_w)), mu * (1 - r), rtol=1e-5)
  hazard, log_w = ancestral.genmd4_transition(log_mu, t, jnp.float32(0.0), jnp.asarray(w, jnp.float32))
  assert np.all(np.isinf(np.asarray(hazard)))  # the last step (s = 0) unmasks every position
  np.testing.assert_allclose(np.asarray(log_w), np.asarray(log_mu), rtol=1e-6)


# Top-p -------------------------------------------------------------------------------------------------------


top_p = jax.jit(categorical.top_p_filter, static_argnums=2)


def reference_top_p(logits, p, rule):
  """Sort-based nucleus in float64 (ReMDM / md4 semantics)."""
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  keep = np.zeros(probs.shape, bool)
  for row in range(probs.shape[0]):
    order = np.argsort(-probs[row], kind="stable")
    cum = np.cumsum(probs[row, order])
    count = max(1, np.sum(cum <= p)) if rule in ("remdm", "remdm_sort") else np.searchsorted(cum, p) + 1
    keep[row, order[:count]] = True
  return keep


@pytest.mark.parametrize("rule", ["remdm", "md4", "remdm_sort"])
@pytest.mark.parametrize("vocab, p", [(50, 0.5), (1000, 0.9), (50257, 0.9), (50257, 0.98), (7, 1e-3)])
def test_top_p_matches_sort_reference(rule, vocab, p):
  """remdm.md §6 item 11 / md4.md §7 item 20: kept set, top-1 always kept, normalised."""
  logits = 3.0 * jax.random.normal(jax.random.key(vocab), (6, vocab))
  out = np.asarray(top_p(logits, p, rule))
  keep = reference_top_p(np.asarray(logits, np.float64), p, rule)
  np.testing.assert_array_equal(np.isfinite(out), keep)
  np.testing.assert_allclose(np.exp(out).sum(-1), 1.0, rtol=1e-5)
  assert np.all(np.isfinite(out[np.arange(6), np.argmax(logits, -1)]))


def test_top_p_identity_ties_and_permutation():
  logits = jax.random.normal(jax.random.key(1), (3, 100))
  for rule in ("remdm", "md4"):
    np.testing.assert_allclose(top_p(logits, 1.0, rule), jax.nn.log_softmax(logits), atol=1e-6)
  tied = jnp.log(jnp.array([[0.3, 0.3, 0.2, 0.1, 0.1]]))
  for p, rule, kept in [(0.5, "remdm", [1, 1, 0, 0, 0]), (0.7, "remdm", [1, 1, 0, 0, 0]),
                        (0.65, "md4", [1, 1, 1, 0, 0]), (0.85, "md4", [1, 1, 1, 1, 1])]:
    np.testing.assert_array_equal(np.isfinite(top_p(tied, p, rule))[0], np.array(kept, bool))
  perm = jax.random.permutation(jax.random.key(2), 100)
  for rule in ("remdm", "md4"):
    permuted_first = top_p(logits[:, perm], 0.7, rule)
    np.testing.assert_allclose(permuted_first, top_p(logits, 0.7, rule)[:, perm], rtol=1e-6)


# Random draws ------------------------------------------------------------------------------------------------


def test_exponential_tail_resolution():
  bits = jnp.array([[0, 0, 1, 2**31, 2**32 - 1], [0, 1, 0, 0, 2**32 - 1]], jnp.uint32).T
  e = np.asarray(categorical.exponential(bits), np.float64)
  np.testing.assert_allclose(e[:3], [0.5 * 2.0**-64, 1.5 * 2.0**-64, 2.0**-32], rtol=1e-6)
  assert e[3] == pytest.approx(np.log(2), rel=1e-6) and np.isfinite(e[4])
  sample = categorical.exponential(jax.random.bits(jax.random.key(0), (400_000, 2), jnp.uint32))
  assert float(jnp.mean(sample)) == pytest.approx(1.0, abs=5 * 1 / np.sqrt(400_000))


def test_two_level_race_distribution():
  """The race draws w / sum w, including a token with a 1e-3 share, over V = 10 (4 groups of 3)."""
  w = np.array([0.3, 0.2, 1e-3, 0.1, 0.05, 0.05, 0.1, 0.099, 0.0, 0.1])
  n = 200_000
  bits = jax.random.bits(jax.random.key(3), (n, sum(categorical.race_groups(10)), 2), jnp.uint32)
  tokens = jax.jit(categorical.race)(jnp.broadcast_to(jnp.log(jnp.asarray(w, jnp.float32)), (n, 10)), bits)
  freq = np.bincount(np.asarray(tokens), minlength=10) / n
  p = w / w.sum()
  assert freq[8] == 0
  np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_tiny_probabilities_are_drawn_exactly():
  """remdm.md §6 item 10: mask weight 1 - 1e-4, and 1e-4 spread over 5e4 tokens (2e-9 each).

  Factorised path: an exponential clock with hazard -log(1 - 1e-4) decides the unmask, then a race over the
  normalised prediction picks the token. (float32 Gumbel-argmax over the joint V + 1 classes cannot draw a class
  ~20 nats below the mask at all, but showing that empirically needs ~1e10 Gumbel draws, too many for a test.)
  """
  n, p_unmask = 2_000_000, 1e-4
  clocks = categorical.exponential(jax.random.bits(jax.random.key(4), (n, 2), jnp.uint32))
  hazard = -np.log1p(-p_unmask)
  fired = np.asarray(clocks <= hazard)
  assert abs(fired.sum() - n * p_unmask) < 4 * np.sqrt(n * p_unmask)
  # The same total spread over 100 steps of 1e-6 each: float32 clocks must not lose the tiny hazards.
  step_hazard = -np.log1p(-1e-6)

  def step(_, state):
    left, hits = state
    return left - step_hazard, hits | (left <= step_hazard)

  hits = jax.jit(lambda c: jax.lax.fori_loop(0, 100, step, (c, jnp.zeros((n,), bool)))[1])(clocks)
  expected = n * -np.expm1(100 * np.log1p(-1e-6))
  assert abs(int(hits.sum()) - expected) < 4 * np.sqrt(expected)
  # Tokens at the fired positions: half the tail carries 3x the weight of the other half.
  vocab = 50_000
  mu = np.where(np.arange(vocab) < vocab // 2, 3.0, 1.0)
  num = int(fired.sum())
  bits = jax.random.bits(jax.random.key(5), (num, sum(categorical.race_groups(vocab)), 2), jnp.uint32)
  tokens = np.asarray(jax.jit(categorical.race)(jnp.broadcast_to(jnp.log(jnp.asarray(mu, jnp.float32)), (num, vocab)), bits))
  assert abs(np.mean(tokens < vocab // 2) - 0.75) < 4 * np.sqrt(0.75 * 0.25 / num)


def test_clocks_fire_with_the_step_probability():
  """md4.md §7 item 18: per-step mask survival (1 - alpha_s) / (1 - alpha_t), via fire()."""
  n = 200_000
  z = jnp.full((n,), 3)
  clocks = categorical.exponential(jax.random.bits(jax.random.key(7), (n, 2), jnp.uint32))
  for p_stay in (0.999, 0.5, 0.01):
    unmask, remask, _ = ancestral.fire(clocks, z, z == 3, 3, -np.log(p_stay), None)
    assert not np.any(remask)
    assert abs(float(jnp.mean(unmask)) - (1 - p_stay)) < 5 * np.sqrt(p_stay * (1 - p_stay) / n)


def test_for_selected_visits_each_selected_position_once():
  select = jax.random.uniform(jax.random.key(8), (1000,)) < 0.3
  for capacity in (8, 1000):
    seen = categorical.for_selected(select, capacity,
                                    lambda idx, c: c.at[idx].add(1, mode="drop"), jnp.zeros(1000, jnp.int32))
    np.testing.assert_array_equal(seen, select.astype(jnp.int32))


def test_conf_weights():
  neg_psi = jnp.array([[-0.9, -0.1, -jnp.inf, -0.5], [-jnp.inf] * 4])
  w = np.asarray(remdm.conf_weights(neg_psi))
  expected = np.exp([-0.9, -0.1, -0.5]) / np.exp([-0.9, -0.1, -0.5]).sum()
  np.testing.assert_allclose(w[0, [0, 1, 3]], expected, rtol=1e-6)
  assert w[0, 2] == 0 and np.all(w[1] == 0)
