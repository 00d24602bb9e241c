"""The contract every dataset implements: `DataInfo`, the `Dataset` iterator, `DatasetSpec`, errors."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import ml_collections
import numpy as np

SPLITS = ('train', 'validation', 'test')


class DataNotFoundError(FileNotFoundError):
  """A data file or directory is missing; the message names the path and how to obtain the data."""


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """Static facts about a dataset, enough to build a model and show its samples.

  Attributes:
    vocab_size: V, the number of data tokens; the mask id is V.
    data_shape: shape of one example, (L,) for text, (H, W, C) for images.
    num_classes: number of class labels (batches then carry 'label'), 0 if none.
    decode: token ids [..., *data_shape] -> text (str for one example, an array of str for a batch) or uint8
      images [..., H, W, C].
    encode: text -> token ids int32 [n] (text datasets, for prompts), None where there is no tokenizer (images).
  """
  vocab_size: int
  data_shape: tuple[int, ...]
  num_classes: int
  decode: Callable[[np.ndarray], str | np.ndarray]
  encode: Callable[[str], np.ndarray] | None = None


class Dataset(Protocol):
  """An iterator over one process's batches: {'x': int32 [B, *data_shape]} (+ 'label': int32 [B])."""

  def __iter__(self) -> Dataset:
    ...

  def __next__(self) -> dict[str, np.ndarray]:
    ...

  def get_state(self) -> dict[str, Any]:
    """A small JSON-serialisable dict: where the next batch starts."""
    ...

  def set_state(self, state: dict[str, Any]) -> None:
    """Continue from a state returned by `get_state` (of this or any dataset built from the same data)."""
    ...


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One entry of the `DATASETS` registry.

  Attributes:
    default_config: () -> the dataset's `config.data` with every key it reads.
    info: config.data -> DataInfo.
    make: (config.data, split, *, batch_size, seed, shard_index, shard_count) -> Dataset; `make_dataset` has
      checked that split is one of SPLITS.
  """
  default_config: Callable[[], ml_collections.ConfigDict]
  info: Callable[[ml_collections.ConfigDict], DataInfo]
  make: Callable[..., Dataset]


def decode_rows(tokens: np.ndarray, num_ids: int, decode_row: Callable[[np.ndarray], str]) -> str | np.ndarray:
  """Token ids [..., L] in [0, num_ids) -> decode_row(ids [L]) for [L], or an array of str [...] (one per row)."""
  tokens = np.asarray(tokens)
  if tokens.ndim == 0 or tokens.size and (tokens.min() < 0 or tokens.max() >= num_ids):
    raise ValueError(f'cannot decode tokens of shape {tokens.shape}: need [..., L] ids in [0, {num_ids - 1}]')
  if tokens.ndim == 1:
    return decode_row(tokens)
  return np.array([decode_row(row) for row in tokens.reshape(-1, tokens.shape[-1])]).reshape(tokens.shape[:-1])


def split_bounds(num_records: int, train_fraction: float, validation_fraction: float) -> dict[str, tuple[int, int]]:
  """[start, stop) per split: train first, then validation, test the rest (text8: 90M / 5M / 5M)."""
  if not (0 < train_fraction < 1 and 0 < validation_fraction < 1 and train_fraction + validation_fraction < 1):
    raise ValueError(f'train_fraction={train_fraction}, validation_fraction={validation_fraction}; need both in '
                     '(0, 1) with a sum below 1 (test gets the rest)')
  train_stop = int(num_records * train_fraction)
  validation_stop = int(num_records * (train_fraction + validation_fraction))
  return {'train': (0, train_stop), 'validation': (train_stop, validation_stop), 'test': (validation_stop, num_records)}
