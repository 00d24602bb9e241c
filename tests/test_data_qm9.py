"""QM9 SMILES pipeline on a tiny CSV this test writes (RDKit for the properties; qm9pack not needed)."""
from __future__ import annotations

import numpy as np
import pytest

import md4_jax.data as data
from md4_jax.data import qm9

SMILES = ['C', 'CCO', 'c1ccccc1', 'C1CC1', 'OC1CC1OC1COC1', 'FC(F)F', 'C[NH3+]', 'C1CC2CC12', 'N#CC(=O)O',
          'CCCCCCCCCCCCCCCCCCCC']  # the last has 20 tokens


def test_tokenize_spells_back_and_rejects_unknown_characters():
  assert qm9.tokenize('ClC[NH3+]c1ccccc1Br') == ['Cl', 'C', '[NH3+]', 'c', '1', 'c', 'c', 'c', 'c', 'c', '1', 'Br']
  assert qm9.tokenize('N#CC(=O)O') == ['N', '#', 'C', 'C', '(', '=', 'O', ')', 'O']
  with pytest.raises(ValueError, match="'CXC' has characters outside"):
    qm9.tokenize('CXC')


@pytest.fixture(name='config')
def _config(tmp_path):
  pytest.importorskip('rdkit')
  pytest.importorskip('pandas')
  csv = tmp_path / 'mols.csv'
  csv.write_text('Index,SMILES\n' + ''.join(f'{i},"{s}"\n' for i, s in enumerate(SMILES)))
  config = data.default_data_config('qm9')
  config.update(path=str(csv), cache_dir=str(tmp_path / 'cache'), seq_len=14, train_fraction=0.5,
                validation_fraction=0.2)
  return config


def test_properties_labels_splits_decode(config, tmp_path):
  from rdkit import Chem  # pylint: disable=g-import-not-at-top
  from rdkit.Chem import QED  # pylint: disable=g-import-not-at-top
  molecules = qm9.load_molecules(config.path, config.cache_dir)
  assert len(list((tmp_path / 'cache').glob('qm9_*.npz'))) == 1
  canonical = [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in SMILES]
  assert sorted(molecules['smiles'].tolist()) == sorted(canonical)
  by_smiles = dict(zip(molecules['smiles'].tolist(), zip(molecules['rings'], molecules['qed'])))
  assert by_smiles['c1ccccc1'][0] == 1 and by_smiles['C1CC2CC12'][0] == 2 and by_smiles['CCO'][0] == 0
  np.testing.assert_allclose(by_smiles['CCO'][1], QED.qed(Chem.MolFromSmiles('CCO')), rtol=1e-6)
  # ring counts: 2 for OC1CC1OC1COC1 and C1CC2CC12, <= 1 otherwise; the 90th percentile is 2
  label = qm9.labels(molecules, 'rings')
  assert sorted(molecules['smiles'][label == 1].tolist()) == sorted(['OC1CC1OC1COC1', 'C1CC2CC12'])

  info = data.dataset_info(config)
  assert set(qm9.vocabulary(molecules['smiles'])) <= set(qm9.VOCABULARY)
  assert qm9.VOCABULARY[0] == '<pad>' and list(qm9.VOCABULARY[1:]) == sorted(qm9.VOCABULARY[1:])
  assert (info.vocab_size, info.data_shape, info.num_classes) == (31, (14,), 2)
  batches = {split: list(data.make_dataset(config, split, batch_size=1, seed=0))
             for split in ('validation', 'test')}
  train = data.make_dataset(config, 'train', batch_size=1, seed=0)
  num_train = sum(s != 'CCCCCCCCCCCCCCCCCCCC' for s in molecules['smiles'][:5])  # train = first 5 of the order
  seen = []
  for split, rows in [('train', [next(train) for _ in range(num_train)])] + list(batches.items()):
    for batch in rows:
      assert batch['x'].dtype == np.int32 and batch['x'].shape == (1, 14) and batch['label'].shape == (1,)
      smiles = info.decode(batch['x'][0])
      assert isinstance(smiles, str)
      assert batch['label'][0] == (smiles in ('OC1CC1OC1COC1', 'C1CC2CC12'))
      np.testing.assert_array_equal(batch['x'][0, :len(info.encode(smiles))], info.encode(smiles))
      assert np.all(batch['x'][0, len(info.encode(smiles)):] == 0)  # right-padded with '<pad>' (id 0)
      seen.append((split, smiles))
  # 10 molecules: train = first 5, validation 2, test 3 of the fixed order; the 20-token chain never fits L = 14
  assert len(seen) == 9 and {s for _, s in seen} == set(canonical) - {'CCCCCCCCCCCCCCCCCCCC'}
  ids = {t: i for i, t in enumerate(qm9.VOCABULARY)}
  stray = [ids['C'], ids['O'], 0, ids['N'], 0]  # a sample ends at its first '<pad>'
  assert info.decode(np.array(stray)) == 'CO' and info.decode(np.array([[0, ids['C']]])).tolist() == ['']
  decoded = info.decode(np.stack([b['x'][0] for b in batches['test']]))
  assert decoded.shape == (len(batches['test']),)
  with pytest.raises(ValueError, match='tokens outside the vocabulary'):
    info.encode('ClC')
  with pytest.raises(ValueError, match=r'ids in \[0, '):
    info.decode(np.array([info.vocab_size]))


def test_tokens_outside_the_qm9_vocabulary_are_refused(config, tmp_path):
  csv = tmp_path / 'cl.csv'
  csv.write_text('SMILES\nClCC\nCCO\n')  # RDKit writes ClCC as CCCl
  config.path = str(csv)
  with pytest.raises(ValueError, match=r"'CCCl' has tokens outside the QM9 vocabulary: \['Cl'\]"):
    data.make_dataset(config, 'train', batch_size=1, seed=0)


def test_unlabelled_and_bad_label(config):
  config.label = 'none'
  assert data.dataset_info(config).num_classes == 0
  batch = next(data.make_dataset(config, 'train', batch_size=2, seed=0))
  assert set(batch) == {'x'}
  config.label = 'logp'
  with pytest.raises(ValueError, match="unknown data.label 'logp'; valid: none, rings, qed"):
    data.dataset_info(config)
