"""D-CFG and D-CBG denoiser transforms against exact answers; label dropout in training."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from md4_jax import guidance, sampling
from md4_jax.model import DiffusionConfig, DiffusionModel
from oracle import ToyDistribution

V, L = 3, 3


def _random_denoiser(seed: int):
  table = jax.nn.log_softmax(jax.random.normal(jax.random.key(seed), (L, V)) * 2.0, axis=-1)  # [L, V]
  return lambda z_t, t: jnp.broadcast_to(table, z_t.shape + (V,)) + 0.0 * t[:, None, None]


def test_cfg_gamma_one_zero_normalised_and_tilted():
  cond, uncond = _random_denoiser(0), _random_denoiser(1)
  z = jnp.full((2, L), V, jnp.int32)
  t = jnp.full((2,), 0.5)
  np.testing.assert_allclose(guidance.cfg_denoiser(cond, uncond, 1.0)(z, t), cond(z, t), atol=1e-6)
  np.testing.assert_allclose(guidance.cfg_denoiser(cond, uncond, 0.0)(z, t), uncond(z, t), atol=1e-6)
  out = guidance.cfg_denoiser(cond, uncond, 3.0)(z, t)
  np.testing.assert_allclose(jnp.sum(jnp.exp(out), -1), 1.0, atol=1e-6)
  with jax.enable_x64(True):
    lc, lu = np.asarray(cond(z, t), np.float64), np.asarray(uncond(z, t), np.float64)
    tilted = np.exp(lc) ** 3.0 * np.exp(lu) ** -2.0
    np.testing.assert_allclose(np.exp(out), tilted / tilted.sum(-1, keepdims=True), rtol=1e-5)


def _config(name: str, **remdm) -> ml_collections.ConfigDict:
  config = sampling.default_config(name)
  config.update(num_steps=64, top_p=1.0)
  config.remdm.update(remdm)
  return config


def _frequencies(tokens: np.ndarray, length: int) -> np.ndarray:
  return np.bincount(np.asarray(tokens) @ V ** np.arange(length - 1, -1, -1), minlength=V**length) / len(tokens)


def test_cfg_through_sample_reproduces_the_conditional_and_the_tilted_marginal():
  cond, uncond = ToyDistribution(V, L, seed=1), ToyDistribution(V, L, seed=2)
  num = 40_000
  tokens = sampling.sample(guidance.cfg_denoiser(cond.denoise, uncond.denoise, 1.0), jax.random.key(0),
                           jnp.full((num, L), V), _config('ancestral'))
  tv = 0.5 * np.abs(_frequencies(tokens, L) - cond.probs).sum()
  assert tv < 0.03, tv  # 27 outcomes, 40k samples: E[TV] ~ 0.01
  # one position: the sampled law is exactly p_gamma(x) ∝ p(x|y)^gamma p(x)^(1-gamma), for every strategy
  p_cond, p_uncond = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.3, 0.5])
  single = lambda p: (lambda z_t, t: jnp.broadcast_to(jnp.log(jnp.asarray(p, jnp.float32)), z_t.shape + (V,)))
  tilted = p_cond**2.5 * p_uncond**-1.5
  tilted /= tilted.sum()
  for config in (_config('ancestral'), _config('remdm', strategy='rescale', eta=0.5),
                 _config('remdm', strategy='conf', t_switch=0.5)):
    tokens = sampling.sample(guidance.cfg_denoiser(single(p_cond), single(p_uncond), 2.5), jax.random.key(1),
                             jnp.full((num, 1), V), config)
    freq = _frequencies(tokens, 1)
    assert np.all(np.abs(freq - tilted) < 5 * np.sqrt(tilted * (1 - tilted) / num)), (config.remdm, freq, tilted)


def test_cbg_matches_brute_force():
  base = ToyDistribution(V, L, seed=3)
  weights = jax.random.normal(jax.random.key(4), (L, V + 1, 2))  # a toy classifier on noisy z: additive logits

  def classifier(z, t):
    logits = jnp.sum(weights[jnp.arange(L), z], axis=-2) * (1.0 + t[:, None])  # [N, 2]
    return jax.nn.log_softmax(logits, axis=-1)

  zs = np.array([z for z in itertools.product(range(V + 1), repeat=L)], np.int32)  # all 64 inputs
  t = jnp.full((len(zs),), 0.3)
  gamma, target = 2.0, 1
  out = np.asarray(guidance.cbg_denoiser(base.denoise, classifier, target, gamma)(jnp.asarray(zs), t))
  with jax.enable_x64(True):
    w = np.asarray(weights, np.float64)
    expected = np.asarray(base.denoise(jnp.asarray(zs), t), np.float64)
    for i, z in enumerate(zs):
      for l in np.flatnonzero(z == V):
        log_y = np.zeros(V)
        for v in range(V):
          zv = z.copy()
          zv[l] = v
          logits = w[np.arange(L), zv].sum(0) * 1.3
          log_y[v] = logits[target] - np.log(np.exp(logits).sum())
        row = np.exp(expected[i, l]) * np.exp(log_y) ** gamma
        expected[i, l] = np.log(row / row.sum())
  np.testing.assert_allclose(out, expected, atol=2e-5)


def _toy_classifier(seed: int):
  weights = jax.random.normal(jax.random.key(seed), (L, V + 1, 2))  # additive logits on noisy z

  def classifier(z, t):
    return jax.nn.log_softmax(jnp.sum(weights[jnp.arange(L), z], axis=-2) * (1.0 + t[:, None]), axis=-1)
  return classifier


@pytest.mark.parametrize('config', [
    _config('ancestral'), _config('remdm', strategy='rescale', eta=0.5), _config('remdm', strategy='conf'),
    ml_collections.ConfigDict(dict(_config('ancestral').to_dict(), final='sample', top_p=0.8, num_steps=8))],
    ids=['ancestral', 'rescale', 'conf', 'final-sample-top-p-T8'])
def test_cbg_guide_at_drawn_positions_gives_the_samples_of_the_dense_transform(config):
  """guide=cbg_guide tilts only where tokens are drawn; the samples equal those of the dense cbg_denoiser,
  whose output is checked against brute force above."""
  base, classifier = ToyDistribution(V, L, seed=5), _toy_classifier(6)
  z_init = jnp.full((2000, L), V, jnp.int32).at[:7, 1].set(2)  # some rows with a fixed token
  dense = sampling.sample(guidance.cbg_denoiser(base.denoise, classifier, 1, 2.5), jax.random.key(7), z_init,
                          config)
  sparse = sampling.sample(base.denoise, jax.random.key(7), z_init, config,
                           guide=guidance.cbg_guide(classifier, 1, 2.5))
  unguided = sampling.sample(base.denoise, jax.random.key(7), z_init, config)
  np.testing.assert_array_equal(np.asarray(sparse), np.asarray(dense))
  assert np.mean(np.asarray(sparse) != np.asarray(unguided)) > 0.05  # the guide changed the samples
  with pytest.raises(ValueError, match='guide needs sequence data'):
    sampling.sample(base.denoise, jax.random.key(7), z_init, _config('ancestral'), genmd4_w=jnp.ones(V),
                    guide=guidance.cbg_guide(classifier, 1, 2.5))


class _LabelRecorder:
  """A stand-in network returning uniform logits and recording the labels it was given."""

  def __init__(self):
    self.seen = []

  def __call__(self, z_t, t, cond, *, rngs=None):
    self.seen.append(cond)
    return jnp.zeros(z_t.shape + (V,))


def test_label_dropout_replaces_labels_by_the_null_id():
  network = _LabelRecorder()
  model = DiffusionModel(network, DiffusionConfig(), V, rngs=None, num_classes=2, label_dropout=0.3)
  cond = jnp.ones((20_000,), jnp.int32)
  model.loss(jnp.zeros((20_000, L), jnp.int32), jax.random.key(0), cond)
  seen = np.asarray(network.seen[-1])
  assert set(np.unique(seen)) == {1, 2}
  frac = np.mean(seen == 2)
  assert abs(frac - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 20_000), frac
  with pytest.raises(ValueError, match=r'model.label_dropout=1.0; need a rate in \[0, 1\)'):
    DiffusionModel(network, DiffusionConfig(), V, rngs=None, num_classes=2, label_dropout=1.0)
