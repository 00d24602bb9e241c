"""Masking schedules against closed forms and float64 finite differences (md4.md §7 items 1-3)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax.schedules import make_schedule

NAMES = ["linear", "cosine", "poly3", "poly0.5", "poly1.7", "geometric"]


@pytest.mark.parametrize("name", NAMES)
def test_endpoints_monotone_and_shape(name):
  with jax.enable_x64(True):
    s = make_schedule(name, eps=1e-4)
    assert float(s.alpha(jnp.float64(0.0))) == pytest.approx(1 - 1e-4, abs=1e-12)
    assert float(s.alpha(jnp.float64(1.0))) == pytest.approx(1e-4, abs=1e-12)
    t = jnp.linspace(0.0, 1.0, 2001, dtype=jnp.float64)
    alpha = s.alpha(t)
    assert alpha.shape == t.shape
    assert np.all(np.diff(np.asarray(alpha)) < 0)
    np.testing.assert_allclose(s.one_minus_alpha(t), 1 - alpha, atol=1e-14)
    grid = jnp.zeros((3, 4), jnp.float64) + 0.3
    assert s.weight(grid).shape == (3, 4) and s.dalpha(grid).shape == (3, 4)


@pytest.mark.parametrize("name", NAMES)
def test_dalpha_matches_float64_finite_differences(name):
  with jax.enable_x64(True):
    s = make_schedule(name, eps=1e-4)
    t = jnp.linspace(0.01, 0.99, 99, dtype=jnp.float64)
    h = 1e-6
    fd = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    np.testing.assert_allclose(s.dalpha(t), fd, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(s.weight(t), s.dalpha(t) / (1 - s.alpha(t)), rtol=1e-10)


def test_unshifted_weights_equal_table4_closed_forms():
  with jax.enable_x64(True):
    t = jnp.linspace(0.01, 0.99, 50, dtype=jnp.float64)
    np.testing.assert_allclose(make_schedule("linear", eps=0.0).weight(t), -1 / t, rtol=1e-12)
    np.testing.assert_allclose(make_schedule("poly3", eps=0.0).weight(t), -3 / t, rtol=1e-12)
    np.testing.assert_allclose(make_schedule("cosine", eps=0.0).weight(t),
                               -(math.pi / 2) * np.tan(math.pi / 2 * (1 - t)), rtol=1e-10)
    bmin, bmax = 1e-3, 5.0
    g = bmin ** (1 - t) * bmax ** t
    a = make_schedule("geometric", eps=0.0, beta_min=bmin, beta_max=bmax)
    z = math.exp(-bmin) - math.exp(-bmax)
    np.testing.assert_allclose(a.alpha(t), (np.exp(-g) - math.exp(-bmax)) / z, rtol=1e-12)


@pytest.mark.parametrize("name", ["linear", "cosine", "poly3"])
def test_logsnr_identity(name):
  """T expm1(lambda_t - lambda_s) alpha_s == T (alpha_t - alpha_s)/(1 - alpha_t) (md4.md §7 item 3)."""
  with jax.enable_x64(True):
    s = make_schedule(name)
    steps = 100
    t = jnp.arange(1, steps + 1, dtype=jnp.float64) / steps
    u = t - 1 / steps
    logsnr = lambda r: jnp.log(s.alpha(r)) - jnp.log(s.one_minus_alpha(r))
    lhs = steps * jnp.expm1(logsnr(t) - logsnr(u)) * s.alpha(u)
    rhs = steps * (s.alpha(t) - s.alpha(u)) / s.one_minus_alpha(t)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9)


def test_schedules_are_hashable_values():
  assert make_schedule("poly3") == make_schedule("poly3.0")
  assert hash(make_schedule("cosine")) == hash(make_schedule("cosine"))
  assert make_schedule("poly3") != make_schedule("poly2")


@pytest.mark.parametrize("name", ["cosin", "poly", "poly0", "poly-1", "polyx", "", "Linear"])
def test_unknown_names_list_the_valid_ones(name):
  with pytest.raises(ValueError, match="valid: linear, cosine, poly<k>"):
    make_schedule(name)


def test_bad_arguments():
  with pytest.raises(ValueError, match="eps"):
    make_schedule("linear", eps=0.7)
  with pytest.raises(ValueError, match="beta_min < beta_max"):
    make_schedule("geometric", beta_min=2.0, beta_max=1.0)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    make_schedule("linear").alpha(jnp.array([0.5, 1.5]))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    make_schedule("cosine").weight(np.array([-0.1]))


def _reference(name, t, eps, beta_min=1e-5, beta_max=20.0):
  """(alpha, 1 - alpha, alpha') in float64 from md4.md §2.2's table and shift (geometric: MD4 Table 4), with the
  differences that cancel written as trigonometric / expm1 identities so that the reference keeps ~1e-12."""
  if name == "linear":
    a, one_minus_a, da = 1 - t, t, -np.ones_like(t)
  elif name.startswith("poly"):
    k = float(name[4:])
    a, one_minus_a, da = -np.expm1(k * np.log(t)), t**k, -k * t**(k - 1)
  elif name == "cosine":
    x = 0.5 * math.pi * (1 - t)
    a, one_minus_a, da = 2 * np.sin(x / 2)**2, np.cos(x), -0.5 * math.pi * np.sin(x)
  else:
    g = beta_min**(1 - t) * beta_max**t
    z = math.exp(-beta_min) - math.exp(-beta_max)
    a = math.exp(-beta_max) * np.expm1(beta_max - g) / z
    one_minus_a = -math.exp(-beta_min) * np.expm1(-beta_min * np.expm1(t * math.log(beta_max / beta_min))) / z
    da = -g * math.log(beta_max / beta_min) * np.exp(-g) / z
  return (1 - 2 * eps) * a + eps, (1 - 2 * eps) * one_minus_a + eps, (1 - 2 * eps) * da


@pytest.mark.parametrize("eps", [1e-4, 0.0])
@pytest.mark.parametrize("name", ["linear", "cosine", "poly3", "poly0.5", "geometric"])
def test_float32_near_both_ends_matches_float64(name, eps):
  """1 - alpha, alpha', the weight and alpha in float32 at t = 1e-7, 1e-6, 1e-3, 0.5 and near 1, each within
  5e-7 relative (a few float32 roundings) of float64 (issue 15 item 3: 1 - cos(pi/2 (1 - t)) was 6e-4 off)."""
  t = np.array([1e-7, 1e-6, 1e-3, 0.5, 1 - 1e-3, 1 - 1e-6], np.float32)
  s = make_schedule(name, eps)
  alpha, one_minus_alpha, dalpha = _reference(name, t.astype(np.float64), eps)
  t32 = jnp.asarray(t)
  for got, want in [(s.one_minus_alpha(t32), one_minus_alpha), (s.dalpha(t32), dalpha),
                    (s.weight(t32), dalpha / one_minus_alpha), (s.alpha(t32), alpha)]:
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=5e-7, atol=0)
