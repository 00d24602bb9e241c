"""UDLM (uniform-noise diffusion) against enumerable float64 references."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from md4_jax import sampling, udlm
from md4_jax.schedules import make_schedule

V, L = 3, 2
ZS = np.array(list(itertools.product(range(V), repeat=L)))  # [9, L] all z_t
TABLE = np.random.default_rng(0).dirichlet(np.ones(V), size=(V**L, L))  # x_theta(z) [9, L, V], t-independent
CODE = V ** np.arange(L - 1, -1, -1)


def alpha64(schedule, t: float) -> float:
  with jax.enable_x64(True):
    return float(schedule.alpha(jnp.asarray(t, jnp.float64)))


def table_denoiser(z_t, t):
  del t
  return jnp.log(jnp.asarray(TABLE, z_t.dtype if z_t.dtype == jnp.float64 else jnp.float32))[z_t @ CODE]


def q_t(x, alpha):  # q(z_t | x) per token [L, V]
  return alpha * np.eye(V)[x] + (1 - alpha) / V


def posterior(z_t, probs, alpha_s, alpha_t):  # q(z_s | z_t, x = probs) per token [L, V]
  a = alpha_t / alpha_s
  unnorm = (a * np.eye(V)[z_t] + (1 - a) / V) * (alpha_s * probs + (1 - alpha_s) / V)
  return unnorm / unnorm.sum(-1, keepdims=True)


def test_integrand_is_the_limit_of_the_per_step_kl():
  schedule = make_schedule('cosine', 1e-4)
  x = np.array([2, 0])
  for t in (0.2, 0.5, 0.9):
    dt = 1e-6
    alpha_t, alpha_s = alpha64(schedule, t), alpha64(schedule, t - dt)
    p_z = np.prod(q_t(x, alpha_t)[np.arange(L), ZS], axis=-1)  # [9]
    kl = 0.0
    for k, z in enumerate(ZS):
      true, model = posterior(z, np.eye(V)[x], alpha_s, alpha_t), posterior(z, TABLE[k], alpha_s, alpha_t)
      kl += p_z[k] * np.sum(true * np.log(true / model))
    with jax.enable_x64(True):
      zs = jnp.asarray(ZS)
      t_b = jnp.full((len(ZS),), t, jnp.float64)
      per_z = udlm.integrand(table_denoiser(zs, t_b).astype(jnp.float64), jnp.tile(jnp.asarray(x), (len(ZS), 1)),
                             zs, schedule.alpha(t_b), schedule.dalpha(t_b))
      expected = float(np.dot(p_z, np.asarray(per_z)))
    np.testing.assert_allclose(kl / dt, expected, rtol=1e-4)
    assert expected > 0


def test_nelbo_estimator_is_unbiased_and_boundary_terms_exact():
  schedule = make_schedule('linear', 1e-2)
  eps = 1e-2
  p1, p0 = alpha64(schedule, 1.0) + (1 - alpha64(schedule, 1.0)) / V, alpha64(schedule, 0.0) + eps / V
  prior = p1 * np.log(V * p1) + (V - 1) * (1 - p1) / (V - 1) * np.log(V * (1 - p1) / (V - 1))
  recon = -(p0 * np.log(p0) + (1 - p0) * np.log((1 - p0) / (V - 1)))
  np.testing.assert_allclose(udlm.boundary_nats(schedule, V), prior + recon, rtol=1e-6)
  x = np.array([1, 1])
  ts = (np.arange(4000) + 0.5) / 4000  # midpoint quadrature of the exact expectation over z_t
  with jax.enable_x64(True):
    exact = 0.0
    for k, z in enumerate(ZS):
      alpha = np.asarray(schedule.alpha(jnp.asarray(ts)))
      p_z = np.prod(alpha[:, None] * (z == x) + (1 - alpha[:, None]) / V, axis=-1)  # [4000]
      zs = jnp.tile(jnp.asarray(z), (len(ts), 1))
      per_t = udlm.integrand(jnp.log(jnp.asarray(TABLE[k]))[None].repeat(len(ts), 0), jnp.tile(jnp.asarray(x),
                             (len(ts), 1)), zs, schedule.alpha(jnp.asarray(ts)), schedule.dalpha(jnp.asarray(ts)))
      exact += float(np.mean(p_z * np.asarray(per_t)))
  exact += L * udlm.boundary_nats(schedule, V)
  batch = jnp.tile(jnp.asarray(x, jnp.int32), (20_000, 1))
  nelbo = np.asarray(jax.jit(udlm.continuous_nelbo, static_argnums=(0, 3))(table_denoiser, jax.random.key(0), batch,
                                                                           schedule))
  se = nelbo.std() / np.sqrt(len(nelbo))
  assert abs(nelbo.mean() - exact) < 5 * se + 1e-4, (nelbo.mean(), exact, se)


def test_sampler_follows_the_exact_chain():
  config = sampling.default_config('ancestral')
  config.update(num_steps=4, schedule='linear', eps=1e-4)
  schedule = make_schedule('linear', 1e-4)
  probs = np.array([0.5, 0.2, 0.3])  # x_theta for every z (one position)
  denoise = lambda z_t, t: jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), z_t.shape + (V,))
  dist = np.full(V, 1.0 / V)
  for i in range(4):
    t, s = (4 - i) / 4, (3 - i) / 4
    trans = np.stack([posterior(np.array([z]), probs[None], alpha64(schedule, s), alpha64(schedule, t))[0]
                      for z in range(V)])  # [V (z_t), V (z_s)]
    dist = dist @ trans
  num = 40_000
  tokens = np.asarray(udlm.sample(denoise, jax.random.key(1), jnp.full((num, 1), V), config))
  freq = np.bincount(tokens[:, 0], minlength=V) / num
  assert np.all(np.abs(freq - dist) < 5 * np.sqrt(dist * (1 - dist) / num)), (freq, dist)
  fixed = np.asarray(udlm.sample(denoise, jax.random.key(2), jnp.array([[0, V], [V, 2]]), config))
  assert fixed[0, 0] == 0 and fixed[1, 1] == 2 and fixed.max() < V
