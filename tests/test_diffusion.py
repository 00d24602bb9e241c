"""MD4 forward process and objectives against exact answers (md4.md §7 items 5, 7-13)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax import diffusion
from md4_jax.schedules import make_schedule
from oracle import ToyDistribution

TOY = ToyDistribution(vocab_size=3, length=3, seed=0)
SUBSETS = [np.array(m, bool) for m in itertools.product([False, True], repeat=TOY.length)]


def _gauss_legendre(nodes):
  t, w = np.polynomial.legendre.leggauss(nodes)
  return 0.5 * (t + 1), 0.5 * w


def exact_continuous_nelbo(x, schedule, nodes=200):
  """Enumerated masks + Gauss-Legendre quadrature over t, float64."""
  with jax.enable_x64(True):
    t, w = _gauss_legendre(nodes)
    alpha = np.asarray(schedule.alpha(jnp.asarray(t)))
    weight = np.asarray(schedule.weight(jnp.asarray(t)))
  integrand = np.zeros_like(t)
  for m in SUBSETS:
    k = m.sum()
    integrand += (1 - alpha) ** k * alpha ** (TOY.length - k) * TOY.exact_masked_nll(x, m)
  recon = TOY.length * schedule.eps * math.log(TOY.vocab_size)
  return float(np.sum(w * -weight * integrand)) + recon


def exact_discrete_nelbo(x, schedule, num_steps):
  with jax.enable_x64(True):
    t = np.arange(1, num_steps + 1) / num_steps
    alpha_t = np.asarray(schedule.alpha(jnp.asarray(t)))
    alpha_s = np.asarray(schedule.alpha(jnp.asarray(t - 1 / num_steps)))
  total = 0.0
  for m in SUBSETS:
    k = m.sum()
    prob = (1 - alpha_t) ** k * alpha_t ** (TOY.length - k)
    total += np.sum((alpha_s - alpha_t) / (1 - alpha_t) * prob) * TOY.exact_masked_nll(x, m)
  return total + TOY.length * schedule.eps * math.log(TOY.vocab_size)


def _mc_per_sequence(loss_fn, copies, key):
  """Runs loss_fn on every sequence `copies` times (interleaved so antithetic t spans [0,1) per sequence)."""
  x = jnp.asarray(np.tile(TOY.sequences, (copies, 1)))
  losses = np.asarray(jax.jit(loss_fn)(key, x), np.float64).reshape(copies, len(TOY.sequences))
  return losses.mean(0), losses.std(0, ddof=1) / math.sqrt(copies)


@pytest.mark.parametrize("name", ["linear", "cosine", "poly3", "geometric"])
def test_exact_nelbo_equals_minus_log_p_without_shift(name):
  """With alpha_0 = 1, alpha_1 = 0 (eps = 0) the oracle's NELBO is exactly -log p(x), for every schedule."""
  schedule = make_schedule(name, eps=0.0)
  for x, p in zip(TOY.sequences, TOY.probs):
    assert exact_continuous_nelbo(x, schedule, nodes=400) == pytest.approx(-math.log(p), abs=1e-7)


@pytest.mark.parametrize("name", ["linear", "cosine", "poly3", "geometric"])
@pytest.mark.parametrize("antithetic", [True, False])
def test_oracle_continuous_nelbo_is_minus_log_p(name, antithetic):
  """E[continuous_nelbo(x)] = -log p(x) within 3 standard errors for every x (md4.md §7 item 7).

  The eps shift moves the exact value by at most eps * N * (2 max_n -log p(x^n | .) + log V): the integral
  misses [0, eps] and [1 - eps, 1] of alpha, the reconstruction term adds N eps log V. Both the shifted exact
  value (quadrature) and -log p(x) are checked.
  """
  schedule = make_schedule(name, eps=1e-4)
  loss_fn = lambda key, x: diffusion.continuous_nelbo(TOY.denoise, key, x, schedule, antithetic)
  mean, se = _mc_per_sequence(loss_fn, copies=4000, key=jax.random.key(1))
  max_token_nll = -np.log(TOY.table.min())
  eps_bound = 1e-4 * TOY.length * (2 * max_token_nll + math.log(TOY.vocab_size))
  for i, (x, p) in enumerate(zip(TOY.sequences, TOY.probs)):
    exact = exact_continuous_nelbo(x, schedule)
    assert abs(exact + math.log(p)) <= eps_bound
    assert abs(mean[i] - exact) <= 3 * se[i], (x, mean[i], exact, se[i])
    assert abs(mean[i] + math.log(p)) <= 3 * se[i] + eps_bound


def test_schedule_invariance_for_any_time_independent_denoiser():
  """The exact NELBO of a fixed (non-oracle) time-independent denoiser is schedule-independent (item 8)."""
  rng = np.random.default_rng(3)
  saved = TOY.table
  TOY.table = rng.dirichlet(np.ones(TOY.vocab_size), size=saved.shape[:2])
  try:
    x = TOY.sequences[5]
    values = [exact_continuous_nelbo(x, make_schedule(n, eps=0.0), nodes=400)
              for n in ["linear", "cosine", "poly3", "geometric"]]
  finally:
    TOY.table = saved
  np.testing.assert_allclose(values, values[0], rtol=1e-9)


def test_discrete_nelbo_bounds_and_converges():
  """L_T >= L_inf, L_T decreases to L_inf as T grows (item 9); MC matches the exact L_T."""
  schedule = make_schedule("linear")
  x = TOY.sequences[11]
  l_inf = exact_continuous_nelbo(x, schedule, nodes=400)
  l_t = [exact_discrete_nelbo(x, schedule, n) for n in (1, 10, 100, 1000)]
  assert all(a >= l_inf - 1e-9 for a in l_t)
  assert l_t[0] > l_t[1] > l_t[2] > l_t[3]
  assert l_t[3] - l_inf < 1e-3 * (l_t[0] - l_inf)
  loss_fn = lambda key, x: diffusion.discrete_nelbo(TOY.denoise, key, x, schedule, num_steps=10)
  mean, se = _mc_per_sequence(loss_fn, copies=4000, key=jax.random.key(2))
  for i, seq in enumerate(TOY.sequences):
    exact = exact_discrete_nelbo(seq, schedule, 10)
    # 4 SE: Bonferroni over the 27 sequences (family-wise false alarm ~0.2%).
    assert abs(mean[i] - exact) <= 4 * se[i], (seq, mean[i], exact)


def test_discrete_nelbo_is_exact_for_one_token():
  """N = 1: no simultaneous unmasking, so L_T = -log p(x) for any T (eps = 0)."""
  marginal = np.bincount(TOY.sequences[:, 0], weights=TOY.probs, minlength=3)
  log_marginal = jnp.log(jnp.asarray(marginal, jnp.float32))
  denoise = lambda z, t: jnp.broadcast_to(log_marginal, z.shape + (3,))
  schedule = make_schedule("cosine", eps=0.0)
  for steps in (1, 3, 50):
    x = jnp.tile(jnp.arange(3, dtype=jnp.int32)[:, None], (20000, 1))
    loss = diffusion.discrete_nelbo(denoise, jax.random.key(steps), x, schedule, steps)
    loss = np.asarray(loss, np.float64).reshape(-1, 3)
    se = loss.std(0) / math.sqrt(loss.shape[0])
    np.testing.assert_array_less(np.abs(loss.mean(0) + np.log(marginal)), 3 * se + 1e-6)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_uniform_denoiser_gives_log_v_bits(name):
  """A zero-init head (uniform prediction) scores (1 - eps) log2 V bits per token (item 10)."""
  vocab, length = 27, 64
  denoise = lambda z, t: jnp.full(z.shape + (vocab,), -math.log(vocab))
  x = jax.random.randint(jax.random.key(0), (4096, length), 0, vocab)
  nelbo = diffusion.continuous_nelbo(denoise, jax.random.key(1), x, make_schedule(name))
  bits = np.asarray(diffusion.bits_per_token(nelbo, length), np.float64)
  se = bits.std() / math.sqrt(bits.size)
  assert abs(bits.mean() - (1 - 1e-4) * math.log2(vocab)) < 3 * se + 1e-5


def test_loss_reads_only_masked_positions():
  """Perturbing the denoiser at unmasked positions leaves the loss unchanged (item 11)."""
  vocab = 5
  base = lambda z, t: jax.nn.log_softmax(jnp.cos(z[..., None] * jnp.arange(vocab) + t[:, None, None]))
  noisy = lambda z, t: jnp.where((z == vocab)[..., None], base(z, t),
                                 jax.nn.log_softmax(jnp.sin(7.0 * z[..., None] + jnp.arange(vocab))))
  x = jax.random.randint(jax.random.key(0), (64, 10), 0, vocab)
  schedule = make_schedule("linear")
  for loss in (lambda f: diffusion.continuous_nelbo(f, jax.random.key(1), x, schedule),
               lambda f: diffusion.discrete_nelbo(f, jax.random.key(1), x, schedule, 20)):
    np.testing.assert_array_equal(loss(base), loss(noisy))


def test_mask_tokens_rate_and_carry_over():
  """Mask rate is 1 - alpha_t (binomial CI), unmasked tokens equal x, alpha 1 / 0 give none / all (item 5)."""
  x = jax.random.randint(jax.random.key(0), (4, 50000), 0, 7)
  alpha = jnp.array([1.0, 0.0, 0.3, 0.9])
  z = np.asarray(diffusion.mask_tokens(jax.random.key(1), x, alpha, 7))
  rate = (z == 7).mean(1)
  assert rate[0] == 0 and rate[1] == 1
  for r, a in zip(rate[2:], (0.3, 0.9)):
    assert abs(r - (1 - a)) < 4 * math.sqrt(a * (1 - a) / 50000)
  np.testing.assert_array_equal(z[z != 7], np.asarray(x)[z != 7])
  per_token = diffusion.mask_tokens(jax.random.key(1), x, jnp.broadcast_to(alpha[:, None], x.shape), 7)
  np.testing.assert_array_equal(per_token, z)


def test_antithetic_times_are_evenly_spaced():
  t = np.sort(np.asarray(diffusion.sample_times(jax.random.key(4), 16)))
  assert t.min() >= 0 and t.max() < 1
  np.testing.assert_allclose(np.diff(t), 1 / 16, atol=1e-6)


def test_units():
  nats = jnp.array([100 * math.log(2.0)])
  assert float(diffusion.bits_per_token(nats, 100)[0]) == pytest.approx(1.0)
  assert float(diffusion.perplexity(nats, 100)[0]) == pytest.approx(2.0)


def test_bad_arguments_are_named():
  x = jnp.array([[0, 1, 3]], jnp.int32)
  with pytest.raises(ValueError, match=r"mask id 3 outside the vocabulary"):
    diffusion.mask_tokens(jax.random.key(0), x, jnp.array([0.5]), 3)
  with pytest.raises(ValueError, match="alpha_t must have shape"):
    diffusion.mask_tokens(jax.random.key(0), x, jnp.array([0.5, 0.5]), 4)
  wrong = lambda z, t: jnp.zeros(z.shape[:1] + (5,))
  with pytest.raises(ValueError, match="denoiser returned shape"):
    diffusion.continuous_nelbo(wrong, jax.random.key(0), x, make_schedule("linear"))
  with pytest.raises(ValueError, match="num_steps"):
    diffusion.discrete_nelbo(TOY.denoise, jax.random.key(0), x, make_schedule("linear"), 0)
