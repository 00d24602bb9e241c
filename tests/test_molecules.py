"""Molecule scoring, sampler specs, outputs and guided generation of md4_jax.molecules on tiny inputs."""
from __future__ import annotations

import csv
import math

import jax
import numpy as np
import pytest

from md4_jax.training import config_base
from md4_jax import molecules, sampling
from md4_jax.data import DataInfo
from md4_jax.model import make_model


def test_score_counts_valid_unique_novel_and_the_property():
  pytest.importorskip('rdkit')
  from rdkit.Chem import QED, MolFromSmiles  # pylint: disable=g-import-not-at-top
  smiles = ['c1ccccc1', 'C1=CC=CC=C1', 'C1CC1', 'C1CC2CC12', 'CCO', 'C1CC', '', 'C(']  # benzene twice (Kekulé)
  reference = {'CCO'}
  s = molecules.score(smiles, reference, 'rings')
  assert (s.valid, s.unique, s.novel) == (5, 4, 3)
  assert s.mean_property == pytest.approx((1 + 1 + 2) / 3)
  q = molecules.score(smiles, reference, 'qed')
  expected = np.mean([QED.qed(MolFromSmiles(m)) for m in ('c1ccccc1', 'C1CC1', 'C1CC2CC12')])
  assert q.mean_property == pytest.approx(expected, rel=1e-9)
  assert math.isnan(molecules.score(['CCO'], reference, 'rings').mean_property)
  with pytest.raises(ValueError, match="unknown property 'logp'; valid: rings, qed"):
    molecules.score(smiles, reference, 'logp')


def test_sampler_config_specs():
  base = sampling.default_config('ancestral')
  config = molecules.sampler_config('remdm:strategy=conf,eta=0.5,t_switch=0.5,top_p=1.0', base, 32)
  assert (config.name, config.num_steps, config.top_p) == ('remdm', 32, 1.0)
  assert (config.remdm.strategy, config.remdm.eta, config.remdm.t_switch) == ('conf', 0.5, 0.5)
  assert molecules.sampler_config('ancestral', base, 64).num_steps == 64
  with pytest.raises(ValueError, match="bad sampler option 'etta=1'"):
    molecules.sampler_config('remdm:etta=1', base, 32)
  with pytest.raises(ValueError, match='unknown sampler name'):
    molecules.sampler_config('mdlm', base, 32)


def test_write_outputs(tmp_path):
  pytest.importorskip('matplotlib')
  rows = [dict(model='m', sampler=s, guidance='cfg', gamma=g, steps=32, seed=0, samples=8, valid=7, unique=6,
               novel=n, mean_property=p)
          for s, g, n, p in [('ancestral', 1.0, 5, 1.5), ('ancestral', 2.0, 3, 2.0), ('remdm', 1.0, 0, float('nan'))]]
  molecules.write_outputs(rows, str(tmp_path), 'rings')
  with open(tmp_path / 'results.csv') as f:
    read = list(csv.DictReader(f))
  assert [(r['sampler'], r['novel'], r['mean_property']) for r in read] == [
      ('ancestral', '5', '1.5'), ('ancestral', '3', '2.0'), ('remdm', '0', 'nan')]
  table = (tmp_path / 'results.md').read_text().splitlines()
  assert table[0].startswith('| model | sampler | guidance | gamma')
  assert table[2] == '| m | ancestral | cfg | 1.000 | 32 | 0 | 8 | 7 | 6 | 5 | 1.500 |'
  assert (tmp_path / 'frontier.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_udlm_model_loss():
  config = config_base.get_base_config()
  config.diffusion.objective = 'udlm'
  config.model.network.update(num_layers=1, num_heads=2, width=16)
  info = DataInfo(vocab_size=5, data_shape=(4,), num_classes=2, decode=lambda x: x)
  model = make_model(config, info, 0)
  loss = model.loss(jax.random.randint(jax.random.key(1), (6, 4), 0, 5), jax.random.key(2))
  assert loss.nelbo.shape == (6,) and bool(np.all(np.asarray(loss.nelbo) > 0))


def test_model_config_specs():
  base = config_base.get_base_config()
  workdir, config = molecules.model_config('/tmp/run:diffusion.objective=udlm,model.network.dropout=0.5', base)
  assert workdir == '/tmp/run' and config.diffusion.objective == 'udlm' and config.model.network.dropout == 0.5
  assert (config.mesh.data, base.diffusion.objective) == (1, 'md4')
  with pytest.raises(ValueError, match="bad model option 'diffusion.objectiv=udlm'"):
    molecules.model_config('/tmp/run:diffusion.objectiv=udlm', base)


def test_cli_bad_guidance_and_missing_classifier_fail_before_any_work(capsys):
  args = ['prog', '--config', 'experiments/qm9.py', '--workdirs', '/nonexistent', '--out', '/nonexistent/out']
  for extra, message in [(['--guidance', 'cbgx'], "unknown --guidance 'cbgx'; valid: cfg, cbg"),
                         (['--guidance', 'cbg'], '--guidance cbg needs --classifier WORKDIR')]:
    assert molecules.main(args + extra) == 2
    assert message in capsys.readouterr().err
