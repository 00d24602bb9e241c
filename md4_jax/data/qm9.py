"""QM9 molecules as SMILES token sequences (ReMDM §5.2 / remdm.md §3.4): regex tokens, L = 32, property labels.

Batches are {'x': int32 [B, L]} plus {'label': int32 [B]} when config.data.label != 'none'.

Source: the `qm9pack` package ships all of QM9 (130,831 molecules) as CSV files, read offline (config.data.path =
None), or any CSV with a 'SMILES' (or 'smiles') column (config.data.path = that file). Every SMILES is canonicalised
with RDKit (unparsable ones are dropped) and its ring count (`rdMolDescriptors.CalcNumRings`) and QED
(`QED.qed`) are computed once and cached in `cache_dir` (default ~/.cache/md4_jax) as
`qm9_<hash of the source>.npz`.

Tokens: the standard SMILES regex (Schwaller et al. 2019), one token per atom / bracket atom / bond / ring digit.
The vocabulary is fixed (V = 31): id 0 is the pad token '<pad>', then the sorted distinct tokens of QM9's RDKit
canonical SMILES (as `vocabulary(load_molecules(None, None)['smiles'])` gives them), so `dataset_info` needs no
data; a CSV with other tokens is refused when read. Molecules with more than `seq_len` tokens are dropped; shorter
ones are right-padded with '<pad>'. The pad is a real token the model learns (it also learns where the molecule
ends); `decode` keeps the tokens before the first '<pad>' (a sampled sequence ends there).

Labels (num_classes = 2): 'rings': ring count >= its 90th percentile over the whole data set (the ReMDM / Schiff
et al. 2024 target); 'qed': QED >= its 90th percentile. 'none': unlabelled (num_classes = 0).

Splits: molecules are put in a fixed random order (numpy seed 0; the source files are sorted by size), then
train / validation / test are contiguous ranges of that order (train_fraction 0.9, validation_fraction 0.05).

config.data keys: name ('qm9'), path (None), seq_len (32), label ('rings'), train_fraction (0.9),
validation_fraction (0.05), cache_dir (None = ~/.cache/md4_jax).
"""
from __future__ import annotations

import functools
import glob
import hashlib
import itertools
import os
import re

import ml_collections
import numpy as np

from md4_jax.data import sampler as sampler_lib
from md4_jax.data.interface import DataInfo, DataNotFoundError, DatasetSpec, decode_rows, split_bounds

SMILES_REGEX = re.compile(r'(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>|\*|\$|'
                          r'%[0-9]{2}|[0-9])')
PAD = '<pad>'
VOCABULARY = (PAD, '#', '(', ')', '-', '1', '2', '3', '4', '5', '=', 'C', 'F', 'N', 'O', '[C-]', '[CH-]', '[N+]',
              '[N-]', '[NH+]', '[NH2+]', '[NH3+]', '[O-]', '[c-]', '[cH-]', '[n-]', '[nH+]', '[nH]', 'c', 'n', 'o')
LABELS = ('none', 'rings', 'qed')
LABEL_PERCENTILE = 90.0


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({'name': 'qm9', 'path': None, 'seq_len': 32, 'label': 'rings',
                                    'train_fraction': 0.9, 'validation_fraction': 0.05, 'cache_dir': None})


def tokenize(smiles: str) -> list[str]:
  """SMILES -> regex tokens; raises ValueError if the tokens do not spell the string back."""
  tokens = SMILES_REGEX.findall(smiles)
  if ''.join(tokens) != smiles:
    raise ValueError(f'SMILES {smiles!r} has characters outside the SMILES token regex')
  return tokens


def _source_files(path: str | None) -> list[str]:
  if path is not None:
    if not os.path.exists(path):
      raise DataNotFoundError(f'no SMILES CSV at config.data.path={path!r}; give a CSV with a SMILES column, or '
                              'None for the QM9 copy of `pip install qm9pack`')
    return [path]
  try:
    import qm9pack  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("'qm9' with path=None needs `pip install qm9pack` (it ships QM9 as CSV)") from e
  return sorted(glob.glob(os.path.join(os.path.dirname(qm9pack.__file__), 'data', 'qm9_part*.csv')))


def _read_smiles(files: list[str]) -> list[str]:
  import pandas as pd  # pylint: disable=g-import-not-at-top
  smiles = []
  for f in files:
    columns = pd.read_csv(f, nrows=0).columns
    column = next((c for c in ('SMILES', 'smiles') if c in columns), None)
    if column is None:
      raise ValueError(f'{f!r} has no SMILES column; its columns: {", ".join(columns)}')
    smiles.extend(pd.read_csv(f, usecols=[column])[column].astype(str).tolist())
  return smiles


def properties(smiles: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
  """RDKit canonical SMILES, ring counts int32 [N] and QED float32 [N] of the parsable molecules."""
  try:
    from rdkit import Chem, RDLogger  # pylint: disable=g-import-not-at-top
    from rdkit.Chem import QED, rdMolDescriptors  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("'qm9' needs `pip install rdkit`") from e
  RDLogger.DisableLog('rdApp.*')
  canonical, rings, qed = [], [], []
  for s in smiles:
    mol = Chem.MolFromSmiles(s)
    if mol is None:
      continue
    canonical.append(Chem.MolToSmiles(mol))
    rings.append(rdMolDescriptors.CalcNumRings(mol))
    qed.append(QED.qed(mol))
  return canonical, np.array(rings, np.int32), np.array(qed, np.float32)


@functools.lru_cache(maxsize=4)
def load_molecules(path: str | None, cache_dir: str | None) -> dict[str, np.ndarray]:
  """{'smiles': str [N], 'rings': int32 [N], 'qed': float32 [N]} in the fixed split order, cached on disk."""
  files = _source_files(path)
  if not files:
    raise DataNotFoundError('qm9pack ships no qm9_part*.csv files; set config.data.path to a SMILES CSV')
  key = '|'.join(f'{os.path.abspath(f)}:{os.path.getsize(f)}' for f in files)
  cache_dir = os.path.expanduser(cache_dir or '~/.cache/md4_jax')
  cache = os.path.join(cache_dir, f'qm9_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz')
  if os.path.exists(cache):
    with np.load(cache) as z:
      return {k: z[k] for k in ('smiles', 'rings', 'qed')}
  canonical, rings, qed = properties(_read_smiles(files))
  order = np.random.default_rng(0).permutation(len(canonical))
  molecules = {'smiles': np.array(canonical)[order], 'rings': rings[order], 'qed': qed[order]}
  os.makedirs(cache_dir, exist_ok=True)
  tmp = cache + f'.tmp{os.getpid()}.npz'
  np.savez(tmp, **molecules)
  os.replace(tmp, cache)
  return molecules


def vocabulary(smiles: np.ndarray) -> tuple[str, ...]:
  """'<pad>' then the sorted distinct regex tokens of `smiles`."""
  return (PAD,) + tuple(sorted({tok for s in smiles for tok in tokenize(str(s))}))


def _check(config: ml_collections.ConfigDict) -> None:
  if config.label not in LABELS:
    raise ValueError(f'unknown data.label {config.label!r}; valid: {", ".join(LABELS)}')
  if not config.seq_len or config.seq_len < 1:
    raise ValueError(f'data.seq_len={config.seq_len}; need a positive int')




def labels(molecules: dict[str, np.ndarray], label: str) -> np.ndarray:
  """int32 [N]: property >= its 90th percentile over all molecules ('rings' / 'qed')."""
  if label not in ('rings', 'qed'):
    raise ValueError(f'labels need data.label in rings, qed; got {label!r}')
  values = molecules[label]
  return (values >= np.percentile(values, LABEL_PERCENTILE)).astype(np.int32)


IDS = {tok: i for i, tok in enumerate(VOCABULARY)}


def info(config: ml_collections.ConfigDict) -> DataInfo:
  _check(config)

  def decode_row(row: np.ndarray) -> str:
    return ''.join(VOCABULARY[t] for t in itertools.takewhile(bool, row.tolist()))  # the first '<pad>' (0) ends it

  def encode(smiles: str) -> np.ndarray:
    tokens = tokenize(smiles)
    unknown = [t for t in tokens if t not in IDS]
    if unknown:
      raise ValueError(f'SMILES {smiles!r} has tokens outside the vocabulary: {unknown}')
    return np.array([IDS[t] for t in tokens], np.int32)

  return DataInfo(vocab_size=len(VOCABULARY), data_shape=(config.seq_len,),
                  num_classes=0 if config.label == 'none' else 2,
                  decode=lambda tokens: decode_rows(tokens, len(VOCABULARY), decode_row), encode=encode)


def encode_padded(smiles: np.ndarray, ids: dict[str, int], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Token ids int32 [N', seq_len] right-padded with id 0, and the indices [N'] of molecules that fit."""
  rows, keep = [], []
  for i, s in enumerate(smiles):
    tokens = tokenize(str(s))
    unknown = sorted(set(tokens) - set(ids))
    if unknown:
      raise ValueError(f'SMILES {str(s)!r} has tokens outside the QM9 vocabulary: {unknown}; valid: {", ".join(ids)}')
    if len(tokens) <= seq_len:
      rows.append([ids[t] for t in tokens] + [ids[PAD]] * (seq_len - len(tokens)))
      keep.append(i)
  return np.array(rows, np.int32).reshape(-1, seq_len), np.array(keep, np.int64)


def make(config: ml_collections.ConfigDict, split: str, *, batch_size: int, seed: int, shard_index: int = 0,
         shard_count: int = 1) -> sampler_lib.RecordDataset:
  _check(config)
  molecules = load_molecules(config.path, config.cache_dir)
  start, stop = split_bounds(len(molecules['smiles']), config.train_fraction, config.validation_fraction)[split]
  x, keep = encode_padded(molecules['smiles'][start:stop], IDS, config.seq_len)
  label = labels(molecules, config.label)[start:stop][keep] if config.label != 'none' else None

  def fetch(idx: np.ndarray) -> dict[str, np.ndarray]:
    return {'x': x[idx]} if label is None else {'x': x[idx], 'label': label[idx]}

  return sampler_lib.split_dataset(len(x), split, fetch, batch_size=batch_size, seed=seed,
                                   shard_index=shard_index, shard_count=shard_count)


QM9 = DatasetSpec(default_config=default_config, info=info, make=make)
