"""GenMD4 objective as md4's code defines it (md4.md §2.5, §2.9, §7 items 14-16), against float64 references.

The references are written from md4.md's formulas: alpha_{t,v} = 1 - (1 - eps) t^{w_v} on t in [t1, 1], the
NELBO by exact enumeration of the masks and Gauss-Legendre quadrature in t, the reconstruction term by enumeration.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax import diffusion, genmd4
from md4_jax.schedules import make_schedule

VOCAB, LENGTH = 3, 2
_TABLE = np.random.default_rng(7).dirichlet(np.ones(VOCAB), size=((VOCAB + 1) ** LENGTH, LENGTH))
SUBSETS = [np.array(m, bool) for m in itertools.product([False, True], repeat=LENGTH)]


def _code(z):
  return z[..., 0] * (VOCAB + 1) + z[..., 1]


def table_denoiser(theta=1.0):
  """A fixed time-independent denoiser (not the oracle, so the schedule gradient is non-zero)."""
  def denoise(z_t, t):
    del t
    return jax.nn.log_softmax(theta * jnp.log(jnp.asarray(_TABLE, jnp.float32))[_code(z_t)])
  return denoise


def smooth_denoiser(z_t, t):
  vocab = 5
  return jax.nn.log_softmax(jnp.cos(1.3 * z_t[..., None] * jnp.arange(vocab) + 2 * t[:, None, None]))


def alpha_ref(t, w, eps):
  """md4.md §2.9: alpha_{t,v} = 1 - (1 - eps) t^{w_v}; t [K, 1], w [V] -> [K, V]."""
  return 1.0 - (1.0 - eps) * t**w


def recon_ref(w, x, eps, t1):
  """E_{z ~ q(z_{t1} | x)}[-log p(x | z)], p(x^n = v | z^n = m) proportional to q(m | v), by enumerating masks."""
  q_mask = (1.0 - eps) * t1**w  # [V] = 1 - alpha_{t1, v}
  total = 0.0
  for m in SUBSETS:
    prob, cost = 1.0, 0.0
    for n in range(LENGTH):
      prob = prob * (q_mask[x[n]] if m[n] else 1.0 - q_mask[x[n]])
      if m[n]:
        cost = cost - jnp.log(q_mask[x[n]] / jnp.sum(q_mask))
    total = total + prob * cost
  return total


def exact_nelbo(w_raw, x, eps=1e-4, t1=genmd4.T1, nodes=64):
  """E_{t, z_t ~ q_w}[L] (md4.md §2.9 eq. 12) + recon: mask enumeration, Gauss-Legendre in log t over [t1, 1]."""
  w = jax.nn.softplus(w_raw)
  nodes_u, weights_u = np.polynomial.legendre.leggauss(nodes)
  log_t = 0.5 * (nodes_u + 1.0) * math.log(t1)  # log t in [log t1, 0]
  t = jnp.asarray(np.exp(log_t))[:, None]
  weights = jnp.asarray(0.5 * weights_u * -math.log(t1) * np.exp(log_t))  # dt = t d(log t)
  alpha_v = alpha_ref(t, w, eps)  # [nodes, V]
  gamma_v = -(1.0 - eps) * w * t**(w - 1.0) / (1.0 - alpha_v)  # alpha' / (1 - alpha)
  mu_all = jnp.asarray(_TABLE)
  total = jnp.zeros(nodes)
  for m in SUBSETS:
    mu = mu_all[_code(np.where(m, VOCAB, x))]  # [N, V]
    prob, value = jnp.ones(nodes), jnp.zeros(nodes)
    for n in range(LENGTH):
      a = alpha_v[:, x[n]]
      prob = prob * jnp.where(m[n], 1 - a, a)
      if m[n]:
        value += gamma_v[:, x[n]] * (1 + jnp.log(mu[n, x[n]])) - gamma_v @ mu[n]
    total += prob * value
  return jnp.sum(weights * total) + recon_ref(w, x, eps, t1)


def test_reconstruction_closed_form():
  """md4.md §2.9's recon term equals the expectation over masks at t1 of -log p(x | z_{t1}), per example."""
  xs = np.array(list(itertools.product(range(VOCAB), repeat=LENGTH)))
  with jax.enable_x64(True):
    w = jnp.array([0.4, 1.3, 2.2], jnp.float64)
    for eps, t1 in [(1e-4, genmd4.T1), (0.0, 0.2), (0.3, 0.7)]:
      code = genmd4.reconstruction(jnp.asarray(xs), w, eps, t1)
      reference = np.array([float(recon_ref(w, x, eps, t1)) for x in xs])
      np.testing.assert_allclose(code, reference, rtol=1e-12)
    assert float(jnp.max(genmd4.reconstruction(jnp.asarray(xs), w, 1e-4, 0.0))) == 0.0


@pytest.mark.parametrize("c", [1.0, 3.0, 0.5])
def test_md4_limit_equal_exponents_eps_and_t1_to_zero(c):
  """md4.md §7 item 14 in its limit: all w = c, eps = 0, t1 = 0 gives MD4's 'poly<c>' NELBO for the same key."""
  x = jax.random.randint(jax.random.key(0), (32, 9), 0, 5)
  key = jax.random.key(1)
  md4 = diffusion.continuous_nelbo(smooth_denoiser, key, x, make_schedule(f"poly{c}", 0.0))
  gen = genmd4.nelbo(smooth_denoiser, key, x, jnp.full((5,), c), eps=0.0, t1=0.0)
  np.testing.assert_allclose(gen, md4, rtol=2e-5, atol=1e-6)
  with jax.enable_x64(True):
    md4_64 = diffusion.continuous_nelbo(smooth_denoiser, key, x, make_schedule(f"poly{c}", 0.0))
    gen_64 = genmd4.nelbo(smooth_denoiser, key, x, jnp.full((5,), c, jnp.float64), eps=0.0, t1=0.0)
    np.testing.assert_allclose(gen_64, md4_64, rtol=1e-12, atol=1e-12)
  # Away from the limit (the defaults eps = 1e-4, t1 = 1e-3) the two objectives are different functions.
  default = genmd4.nelbo(smooth_denoiser, key, x, jnp.full((5,), c))
  assert np.max(np.abs(np.asarray(default) - np.asarray(md4))) > 1e-3


def test_init_gives_power_init():
  np.testing.assert_allclose(jax.nn.softplus(genmd4.init_w_raw(7, 1.0)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(jax.nn.softplus(genmd4.init_w_raw(7, 2.5)), 2.5, rtol=1e-6)
  with pytest.raises(ValueError, match="power_init"):
    genmd4.init_w_raw(7, 0.0)


def test_token_schedule_float32_matches_float64_formulas():
  """alpha (-> eps at t = 1 without cancellation), log(1 - alpha) and the weight -w/t, float32 vs float64."""
  w = np.array([0.3, 1.0, 2.5])
  t = np.array([genmd4.T1, 1e-2, 0.5, np.float32(1 - 1e-3), np.float32(1 - 1e-6), 1.0])[:, None]
  sched = genmd4.TokenSchedule(jnp.asarray(w, jnp.float32), 1e-4)
  t32 = jnp.asarray(t, jnp.float32)
  alpha = 1.0 - (1.0 - 1e-4) * t**w
  np.testing.assert_allclose(sched.alpha(t32), alpha, rtol=2e-6)
  np.testing.assert_allclose(sched.log_one_minus_alpha(t32), np.log(1.0 - alpha), rtol=2e-6, atol=1e-7)
  np.testing.assert_allclose(sched.weight(t32), -(1.0 - 1e-4) * w * t**(w - 1) / (1.0 - alpha), rtol=2e-6)


@pytest.mark.parametrize("t1", [genmd4.T1, 0.3])
def test_nelbo_is_unbiased_for_the_enumerated_nelbo(t1):
  """The one-draw NELBO averages to the exact E_{t in [t1, 1], z_t}[L] + recon (the 1 - t1 factor included)."""
  x = np.array([2, 0])
  w_raw = genmd4.init_w_raw(VOCAB, 1.0) + jnp.array([-1.5, 1.2, 0.0])  # w ~ [0.24, 2.5, 1.0]
  with jax.enable_x64(True):
    exact = float(exact_nelbo(jnp.asarray(w_raw, jnp.float64), x, t1=t1))
  batch = jnp.tile(jnp.asarray(x, jnp.int32)[None], (4096, 1))
  draw = lambda key: jnp.mean(genmd4.nelbo(table_denoiser(), key, batch, jax.nn.softplus(w_raw), t1=t1))
  values = np.asarray(jax.jit(jax.vmap(draw))(jax.random.split(jax.random.key(5), 64)), np.float64)
  se = values.std(ddof=1) / math.sqrt(len(values))
  assert abs(values.mean() - exact) <= 4 * se, (values.mean(), exact, se)


def test_rloo_gradient_is_unbiased_and_naive_autodiff_is_not():
  """The RLOO surrogate's gradient in w matches the exact gradient of E_q[L] (item 15)."""
  x = np.array([2, 0])
  w_raw = genmd4.init_w_raw(VOCAB, 1.0) + jnp.array([-1.5, 1.2, 0.0])  # w ~ [0.24, 2.5, 1.0]
  with jax.enable_x64(True):
    exact_grad = np.asarray(jax.grad(exact_nelbo)(jnp.asarray(w_raw, jnp.float64), x))
    exact_value = float(exact_nelbo(jnp.asarray(w_raw, jnp.float64), x))
  batch = jnp.tile(jnp.asarray(x, jnp.int32)[None], (8192, 1))
  denoise = table_denoiser()

  def estimates(key):
    surrogate = lambda wr: genmd4.rloo_loss(denoise, key, batch, jax.nn.softplus(wr)).surrogate
    naive = lambda wr: jnp.mean(genmd4.nelbo(denoise, key, batch, jax.nn.softplus(wr)))
    result = genmd4.rloo_loss(denoise, key, batch, jax.nn.softplus(w_raw))
    return jax.grad(surrogate)(w_raw), jax.grad(naive)(w_raw), jnp.mean(result.nelbo)

  keys = jax.random.split(jax.random.key(0), 48)
  rloo, naive, nelbo = (np.asarray(a, np.float64) for a in jax.jit(jax.vmap(estimates))(keys))
  se = rloo.std(0, ddof=1) / math.sqrt(len(keys))
  assert np.all(np.abs(rloo.mean(0) - exact_grad) <= 4 * se), (rloo.mean(0), exact_grad, se)
  naive_se = naive.std(0, ddof=1) / math.sqrt(len(keys))
  assert np.max(np.abs(naive.mean(0) - exact_grad) / naive_se) > 10, "pathwise-only should be biased"
  # The reported number is the NELBO: unbiased for E_q[L].
  assert abs(nelbo.mean() - exact_value) <= 4 * nelbo.std(ddof=1) / math.sqrt(len(keys))


def test_t_zero_drawn_gives_a_finite_gradient(monkeypatch):
  """u = 0 drawn for every example: t = t1, and the gradient in w is finite with some w < 1 (issue 15 item 2).
  The same draw on [0, 1) (t1 = 0) is t = 0, where -w/t and t^(w-1) are not finite."""
  monkeypatch.setattr(diffusion, "sample_times", lambda key, batch_size, antithetic=True: jnp.zeros(batch_size))
  x = jax.random.randint(jax.random.key(3), (64, LENGTH), 0, VOCAB)
  w_raw = genmd4.init_w_raw(VOCAB, 1.0) + jnp.array([-1.5, 0.0, 1.0])  # w ~ [0.24, 1.0, 1.9]

  def grad(t1):
    surrogate = lambda wr: genmd4.rloo_loss(table_denoiser(), jax.random.key(4), x, jax.nn.softplus(wr),
                                            t1=t1).surrogate
    return np.asarray(jax.grad(surrogate)(w_raw))

  assert np.all(np.isfinite(grad(genmd4.T1)))
  assert not np.all(np.isfinite(grad(0.0)))


def test_score_term_gives_no_network_gradient_and_is_not_reported():
  """d/dtheta (surrogate - mean NELBO) == 0: the RLOO term only trains w (item 15); nelbo != surrogate."""
  x = jax.random.randint(jax.random.key(3), (256, LENGTH), 0, VOCAB)
  w = jnp.array([1.5, 0.8, 2.0])

  def rloo_term(theta):
    result = genmd4.rloo_loss(table_denoiser(theta), jax.random.key(4), x, w)
    return result.surrogate - jnp.mean(result.nelbo)

  assert float(jax.grad(rloo_term)(1.3)) == 0.0
  assert float(rloo_term(1.3)) != 0.0


def test_bad_arguments():
  x = jnp.zeros((2, LENGTH), jnp.int32)
  with pytest.raises(ValueError, match=r"shape \[V\]=\(3,\)"):
    genmd4.nelbo(table_denoiser(), jax.random.key(0), x, jnp.ones(4))
  with pytest.raises(ValueError, match="positive"):
    genmd4.rloo_loss(table_denoiser(), jax.random.key(0), x, jnp.array([1.0, -1.0, 1.0]))
  with pytest.raises(ValueError, match=r"t1 must lie in \[0, 1\); got 1.0"):
    genmd4.nelbo(table_denoiser(), jax.random.key(0), x, jnp.ones(3), t1=1.0)
  with pytest.raises(ValueError, match=r"eps must lie in \[0, 1\); got -0.1"):
    genmd4.rloo_loss(table_denoiser(), jax.random.key(0), x, jnp.ones(3), eps=-0.1)
