"""Input pipelines: `make_dataset(config.data, split, ...)` -> an iterator of numpy batches with a saveable state.

Every dataset is a `DatasetSpec` in `DATASETS`; `default_data_config(name)` gives its `config.data` (the keys are
documented in the dataset's module). Batches are per process: `batch_size` is this process's share of the global
batch, and process `shard_index` of `shard_count` (jax.process_index() / jax.process_count()) gets its slice of every
global batch (sampler.py). Only numpy is needed for 'chars' and 'text8'; other datasets import their packages lazily.
"""
from __future__ import annotations

import ml_collections

from md4_jax.data import chars
from md4_jax.data import images
from md4_jax.data import owt
from md4_jax.data import qm9
from md4_jax.data import zeroshot
from md4_jax.data.interface import DataInfo, DataNotFoundError, Dataset, DatasetSpec, SPLITS, split_bounds

DATASETS: dict[str, DatasetSpec] = {
    'chars': chars.CHARS,
    'text8': chars.TEXT8,
    'owt': owt.OWT,
    'digits': images.DIGITS,
    'cifar10': images.CIFAR10,
    'imagenet64': images.IMAGENET64,
    'qm9': qm9.QM9,
    **zeroshot.SPECS,
}

__all__ = ['DATASETS', 'DataInfo', 'DataNotFoundError', 'Dataset', 'DatasetSpec', 'SPLITS', 'dataset_info',
           'default_data_config', 'make_dataset', 'split_bounds']


def _spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; valid: {", ".join(sorted(DATASETS))}')
  return DATASETS[name]


_NONE_TYPES = {'seq_len': int, 'group_rows': int}  # other None-valued keys hold strings (paths, names)


def default_data_config(name: str) -> ml_collections.ConfigDict:
  """The `config.data` of dataset `name` with its defaults.

  Keys whose default is None become typed placeholders, so `--config.data.path=...` can override them.
  """
  config = _spec(name).default_config()
  for key, value in config.items():
    if value is None:
      config[key] = ml_collections.config_dict.placeholder(_NONE_TYPES.get(key, str))
  return config


def dataset_info(data_config: ml_collections.ConfigDict) -> DataInfo:
  """Vocabulary size, example shape, number of classes and decoder of `config.data`."""
  return _spec(data_config.name).info(data_config)


def make_dataset(data_config: ml_collections.ConfigDict, split: str, *, batch_size: int, seed: int,
                 shard_index: int = 0, shard_count: int = 1) -> Dataset:
  """This process's batches of `split` ('train': infinite and shuffled; 'validation' / 'test': one pass in order,
  the last incomplete global batch dropped)."""
  spec = _spec(data_config.name)
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; valid: {", ".join(SPLITS)}')
  return spec.make(data_config, split, batch_size=batch_size, seed=seed, shard_index=shard_index,
                   shard_count=shard_count)
