"""GenMD4 objective: reduction to MD4, the unbiased RLOO gradient, the reported metric (md4.md §7 items 14-16)."""

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


@pytest.mark.parametrize("c", [1.0, 3.0, 0.5])
def test_equal_exponents_reduce_to_md4_poly(c):
  x = jax.random.randint(jax.random.key(0), (32, 9), 0, 5)
  key = jax.random.key(1)
  w = jnp.full((5,), c)
  md4 = diffusion.continuous_nelbo(smooth_denoiser, key, x, make_schedule(f"poly{c}"))
  np.testing.assert_allclose(genmd4.nelbo(smooth_denoiser, key, x, w), md4, rtol=2e-5, atol=1e-6)
  with jax.enable_x64(True):
    md4_64 = diffusion.continuous_nelbo(smooth_denoiser, key, x, make_schedule(f"poly{c}"))
    gen_64 = genmd4.nelbo(smooth_denoiser, key, x, jnp.full((5,), c, jnp.float64))
    np.testing.assert_allclose(gen_64, md4_64, rtol=1e-12, atol=1e-12)


def test_init_gives_power_init():
  np.testing.assert_allclose(jax.nn.softplus(genmd4.init_w_raw(7, 1.0)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(jax.nn.softplus(genmd4.init_w_raw(7, 2.5)), 2.5, rtol=1e-6)
  with pytest.raises(ValueError, match="power_init"):
    genmd4.init_w_raw(7, 0.0)


def exact_expected_loss(w_raw, x, eps=1e-4, nodes=200):
  """E_{t, z_t ~ q_w}[L] by mask enumeration and Gauss-Legendre quadrature; differentiable in w_raw."""
  w = jax.nn.softplus(w_raw)
  t, weights = np.polynomial.legendre.leggauss(nodes)
  t, weights = jnp.asarray(0.5 * (t + 1)), jnp.asarray(0.5 * weights)
  sched = genmd4.schedule(w, eps)
  alpha_v = sched.alpha(t[:, None])  # [nodes, V]
  gamma_v = sched.weight(t[:, None])  # [nodes, V]
  mu_all = jnp.asarray(_TABLE)
  total = jnp.zeros_like(t)
  for m in SUBSETS:
    z = np.where(m, VOCAB, x)
    mu = mu_all[_code(z)]  # [N, V]
    prob = jnp.ones_like(t)
    value = jnp.zeros_like(t)
    for n in range(LENGTH):
      a = alpha_v[:, x[n]]
      prob = prob * jnp.where(m[n], 1 - a, a)
      if m[n]:
        value += gamma_v[:, x[n]] * (1 + jnp.log(mu[n, x[n]])) - gamma_v @ mu[n]
    total += prob * value
  return jnp.sum(weights * total) + LENGTH * eps * math.log(VOCAB)


def test_rloo_gradient_is_unbiased_and_naive_autodiff_is_not():
  """The RLOO surrogate's gradient in w matches the exact gradient of E_q[L] (item 15)."""
  x = np.array([2, 0])
  w_raw = genmd4.init_w_raw(VOCAB, 1.0) + jnp.array([0.4, 1.2, 0.0])  # w ~ [1.6, 2.5, 1.0]
  with jax.enable_x64(True):
    exact_grad = np.asarray(jax.grad(exact_expected_loss)(jnp.asarray(w_raw, jnp.float64), x))
    exact_value = float(exact_expected_loss(jnp.asarray(w_raw, jnp.float64), x))
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


def test_score_term_gives_no_network_gradient_and_is_not_reported():
  """d/dtheta (surrogate - mean NELBO) == 0: the RLOO term only trains w (item 15); nelbo != surrogate."""
  x = jax.random.randint(jax.random.key(3), (256, LENGTH), 0, VOCAB)
  w = jnp.array([1.5, 0.8, 2.0])

  def rloo_term(theta):
    result = genmd4.rloo_loss(table_denoiser(theta), jax.random.key(4), x, w)
    return result.surrogate - jnp.mean(result.nelbo)

  assert float(jax.grad(rloo_term)(1.3)) == 0.0
  assert float(rloo_term(1.3)) != 0.0


def test_bad_exponents():
  x = jnp.zeros((2, LENGTH), jnp.int32)
  with pytest.raises(ValueError, match=r"shape \[V\]=\(3,\)"):
    genmd4.nelbo(table_denoiser(), jax.random.key(0), x, jnp.ones(4))
  with pytest.raises(ValueError, match="positive"):
    genmd4.rloo_loss(table_denoiser(), jax.random.key(0), x, jnp.array([1.0, -1.0, 1.0]))
