"""The 'classifier' objective (a noisy property classifier p(y | z_t, t) for D-CBG): exact loss on MD4-masked
inputs, mean-pooled logits, training through the one loop, and guided generation with the trained classifier."""
from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax import generate, molecules, train
from md4_jax.training import sharding
from md4_jax.model import DiffusionConfig, DiffusionModel
from md4_jax.schedules import make_schedule
from train_configs import load_experiment

V, L, C = 5, 6, 2


class _Recorder:
  """A network returning fixed per-position class logits [B, L, C] and recording what it was given."""

  def __init__(self, logits):
    self.logits, self.seen = logits, []

  def __call__(self, z_t, t, cond, *, rngs=None):
    self.seen.append((z_t, t, cond))
    return jnp.broadcast_to(self.logits, z_t.shape + (C,))


def _model(network, label_dropout=0.0):
  return DiffusionModel(network, DiffusionConfig(objective='classifier', schedule='cosine'), V, rngs=None,
                        num_classes=C, label_dropout=label_dropout)


def test_loss_is_the_cross_entropy_of_mean_pooled_logits_on_masked_inputs():
  logits = jax.random.normal(jax.random.key(0), (L, C))  # [L, C], the same for every example
  network = _Recorder(logits)
  model = _model(network, label_dropout=0.5)  # label dropout is for CFG models: the targets stay as given
  batch = 20_000
  x = jax.random.randint(jax.random.key(1), (batch, L), 0, V)
  y = jax.random.randint(jax.random.key(2), (batch,), 0, C)
  loss = model.loss(x, jax.random.key(3), y)

  log_p = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64).mean(axis=0)))  # [C]
  np.testing.assert_allclose(np.asarray(loss.nelbo), -log_p[np.asarray(y)], rtol=1e-6)
  np.testing.assert_allclose(float(loss.objective), float(np.mean(-log_p[np.asarray(y)])), rtol=1e-6)
  z_t, t, cond = network.seen[-1]
  z_t, t, x = np.asarray(z_t), np.asarray(t), np.asarray(x)
  assert cond is None  # the classifier is not conditioned on the label it predicts
  assert np.all((z_t == x) | (z_t == V))
  masked = (z_t == V).sum()  # ~ Binomial-sum with mean sum_b L (1 - alpha(t_b))
  p = 1.0 - np.asarray(make_schedule('cosine').alpha(t), np.float64)
  assert abs(masked - L * p.sum()) < 5 * math.sqrt(L * np.sum(p * (1 - p))), masked
  assert np.ptp(t) > 0.9  # t ~ U[0, 1] per example

  with pytest.raises(ValueError, match="'classifier' needs labelled data"):
    model.loss(x[:4], jax.random.key(3), None)


def test_zero_initialised_head_gives_log_c():
  config = load_experiment('qm9_classifier')
  from md4_jax.data import DataInfo  # pylint: disable=g-import-not-at-top
  from md4_jax.model import make_model  # pylint: disable=g-import-not-at-top
  info = DataInfo(vocab_size=V, data_shape=(L,), num_classes=C, decode=lambda x: x)
  model = make_model(config, info, 0)
  assert model.network.config.num_outputs == C and model.network.config.num_classes == 0
  x = jax.random.randint(jax.random.key(1), (4, L), 0, V)
  np.testing.assert_allclose(np.asarray(model.loss(x, jax.random.key(0), jnp.array([0, 1, 1, 0])).nelbo),
                             math.log(C), rtol=1e-6)
  with pytest.raises(ValueError, match='needs model.kind=.transformer. and labelled data'):
    make_model(config, DataInfo(vocab_size=V, data_shape=(L,), num_classes=0, decode=lambda x: x), 0)


RINGS = ['CCO', 'CCCC', 'CC(C)O', 'CCN', 'c1ccccc1', 'C1CC1', 'C1CCOC1', 'OC1CC1OC1COC1', 'C1CC2CC12',
         'C1CC2C3CC3C12', 'C1C2CC3CC1C23', 'CC(=O)O', 'CCCCO', 'NCC=O', 'C#N', 'OCCO']


@pytest.fixture(name='qm9_config')
def _qm9_config(tmp_path):
  pytest.importorskip('rdkit')
  pytest.importorskip('pandas')
  csv = tmp_path / 'mols.csv'
  smiles = RINGS * 8
  csv.write_text('Index,SMILES\n' + ''.join(f'{i},"{s}"\n' for i, s in enumerate(smiles)))
  config = load_experiment('qm9_classifier')
  config.data.update(path=str(csv), cache_dir=str(tmp_path / 'cache'), seq_len=16, train_fraction=0.7,
                     validation_fraction=0.15)
  config.optim.update(lr=3e-3, warmup_steps=5)
  config.train.update(num_steps=60, batch_size=32, log_every=20, eval_every=60, eval_batch_size=16,
                      eval_batches=1, checkpoint_every=60, async_checkpoint=False)
  config.mesh.data = 1
  return config


def test_classifier_trains_in_the_loop_and_guides_generation(qm9_config, tmp_path):
  workdir = str(tmp_path / 'classifier')
  last = train.train_and_evaluate(qm9_config, workdir)
  records = [json.loads(line) for line in open(tmp_path / 'classifier' / 'metrics.jsonl')]
  first = next(r for r in records if 'train/bits_per_token' in r)
  assert first['step'] == 20 and last['train/bits_per_token'] < first['train/bits_per_token']
  # a classifier ignoring its input does no better than the entropy of the label prior (bits)
  from md4_jax.data import qm9  # pylint: disable=g-import-not-at-top
  p = float(np.mean(qm9.labels(qm9.load_molecules(qm9_config.data.path, qm9_config.data.cache_dir), 'rings')))
  prior_bits = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
  assert last['train/bits_per_token'] < prior_bits - 0.1 and math.isfinite(last['eval/bits_per_token'])

  graphdef, params = molecules.load_classifier(qm9_config, workdir, 'rings')
  md4 = load_experiment('qm9')
  md4.data = qm9_config.data
  md4.model.network.update(num_layers=1, num_heads=2, width=16)
  from md4_jax.data import dataset_info  # pylint: disable=g-import-not-at-top
  from md4_jax.model import make_model  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  info = dataset_info(md4.data)
  md4_graphdef, md4_params = nnx.split(make_model(md4, info, 0), nnx.Param)
  sampler = molecules.sampler_config('remdm:strategy=rescale,eta=0.5', md4.sampler, 4)
  guide = generate.Guide('cbg', 3.0, (graphdef, params))
  md4.mesh.data = 1
  mesh = sharding.make_mesh(md4.mesh)
  md4_params = jax.device_put(md4_params, sharding.replicated(mesh))
  tokens, _ = generate.generate(md4_graphdef, md4_params, sampler, np.full((6, 16), info.vocab_size, np.int32),
                                jax.random.key(0), mesh=mesh, batch_size=3, label=1, guide=guide)
  assert tokens.shape == (6, 16) and tokens.min() >= 0 and tokens.max() < info.vocab_size
  with pytest.raises(ValueError, match="the classifier predicts data.label='rings' but the models target 'qed'"):
    molecules.load_classifier(qm9_config, workdir, 'qed')
  qed_config = qm9_config.copy_and_resolve_references()
  qed_config.data.label = 'qed'  # a config that says QED, pointed at the run trained on ring counts
  with pytest.raises(ValueError, match="the classifier predicts data.label='rings' but the models target 'qed'"):
    molecules.load_classifier(qed_config, workdir, 'qed')  # its config.json says what it predicts
  os.remove(os.path.join(workdir, 'config.json'))  # a run written before config.json: the fingerprint refuses
  with pytest.raises(ValueError, match="data.label: checkpoint 'rings' vs config 'qed'"):
    molecules.load_classifier(qed_config, workdir, 'qed')
