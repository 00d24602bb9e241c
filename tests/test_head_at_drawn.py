"""The vocabulary head evaluated only where tokens are drawn (sampling.sample(..., head_fn=...)): the same samples
as the full denoiser, for every sampler path that reads predictions, with and without a guide."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax.training import config_base
from md4_jax import generate, guidance, objectives, sampling
from md4_jax.data import DataInfo
from md4_jax.model import make_model

V, L = 11, 12


def _model(num_classes=0):
  """A tiny transformer MD4 with every parameter perturbed (the head and adaLN start at zero)."""
  config = config_base.get_base_config()
  config.model.network.update(num_layers=1, num_heads=2, width=16)
  graphdef, params = nnx.split(make_model(config, DataInfo(V, (L,), num_classes, lambda x: x), 0), nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  leaves = [p + 0.7 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  return graphdef, jax.tree.unflatten(treedef, leaves)


def _config(name, **fields):
  config = sampling.default_config(name)
  config.num_steps = 16
  for key, value in fields.items():
    (config.remdm if key in config.remdm else config)[key] = value
  return config


CONFIGS = {
    'ancestral-argmax': _config('ancestral'),
    'ancestral-sample-top-p': _config('ancestral', final='sample', top_p=0.8, temperature=0.7),
    'remdm-loop': _config('remdm'),
    'remdm-conf': _config('remdm', strategy='conf', top_p=1.0),
    'remdm-rescale-cached': _config('remdm', strategy='rescale', eta=0.5, cache=True),
    'euler': _config('euler'),
}


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_head_at_drawn_positions_gives_the_full_denoisers_samples(name):
  graphdef, params = _model()
  config = CONFIGS[name]
  z_init = jnp.full((64, L), V, jnp.int32).at[:5, 3].set(4)  # some prompts
  dense, dense_stats = sampling.sample(generate.denoiser(graphdef, params), jax.random.key(3), z_init, config,
                                       return_stats=True)
  features, head = generate.factored_denoiser(graphdef, params)
  factored, stats = sampling.sample(features, jax.random.key(3), z_init, config, head_fn=head, return_stats=True)
  np.testing.assert_array_equal(np.asarray(factored), np.asarray(dense))
  assert int(stats['nfe']) == int(dense_stats['nfe'])
  assert len(np.unique(np.asarray(dense))) > V // 2  # a real spread of tokens, not a constant


def test_head_at_drawn_positions_with_labels_and_a_guide():
  graphdef, params = _model(num_classes=3)
  cond = jnp.full((32,), 2, jnp.int32)
  classifier = lambda z, t: jax.nn.log_softmax(
      jnp.stack([jnp.sum(z == 1, -1), jnp.sum(z == 2, -1)], -1).astype(jnp.float32) * (1.0 - t[:, None]))
  guide = guidance.cbg_guide(classifier, 1, 2.0)
  z_init = jnp.full((32, L), V, jnp.int32)
  config = CONFIGS['remdm-conf']
  dense = sampling.sample(generate.denoiser(graphdef, params, cond), jax.random.key(5), z_init, config,
                          guide=guide)
  features, head = generate.factored_denoiser(graphdef, params, cond)
  factored = sampling.sample(features, jax.random.key(5), z_init, config, head_fn=head, guide=guide)
  np.testing.assert_array_equal(np.asarray(factored), np.asarray(dense))


def test_head_fn_errors():
  graphdef, params = _model()
  features, head = generate.factored_denoiser(graphdef, params)
  z_init = jnp.full((2, L), V, jnp.int32)
  with pytest.raises(ValueError, match='head_fn .* cannot serve genmd4_w'):
    sampling.sample(features, jax.random.key(0), z_init, CONFIGS['ancestral-argmax'], head_fn=head,
                    genmd4_w=jnp.ones(V))
  call = lambda objective: generate.sampler_functions(graphdef, params, objectives.get(objective), None,
                                                      generate.Guide(), None)
  assert 'head_fn' not in call('genmd4') and 'head_fn' in call('md4')
