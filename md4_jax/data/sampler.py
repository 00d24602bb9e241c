"""Deterministic, sharded, resumable order over N random-access records, and the batch iterator built on it.

The global stream is epoch 0, epoch 1, ... where epoch e is a permutation of range(N) drawn by
`np.random.default_rng([seed, e])` (the identity when not shuffled). Global batch b is stream[b*G:(b+1)*G] with
G = batch_size * shard_count, and process k of shard_count takes its slice [k*B, (k+1)*B). Hence:
  * shards are disjoint and together give exactly the batches of one process with batch size G;
  * the state (epoch, position = records of the stream consumed within that epoch) is the same on every process
    and does not depend on shard_count, so a run can resume on a different number of hosts;
  * repeating (train) streams never drop a record: batches run across epoch boundaries;
  * one-pass (eval) streams stop before the first incomplete global batch: the last N mod G records are dropped.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np


class IndexSampler:
  """Record indices of this process's part of each global batch (see module docstring)."""

  def __init__(self, num_records: int, *, batch_size: int, seed: int, shuffle: bool, repeat: bool,
               shard_index: int = 0, shard_count: int = 1):
    if num_records < 1:
      raise ValueError(f'num_records={num_records}; need at least 1 record')
    if batch_size < 1:
      raise ValueError(f'batch_size={batch_size}; must be a positive int')
    if shard_count < 1 or not 0 <= shard_index < shard_count:
      raise ValueError(f'shard_index={shard_index}, shard_count={shard_count}; need 0 <= shard_index < '
                       'shard_count')
    if seed < 0:
      raise ValueError(f'seed={seed}; must be a non-negative int')
    self.num_records = num_records
    self.batch_size = batch_size
    self.global_batch_size = batch_size * shard_count
    self.shard_index = shard_index
    self.seed = seed
    self.shuffle = shuffle
    self.repeat = repeat
    if not repeat and num_records < self.global_batch_size:
      raise ValueError(f'a one-pass split of {num_records} records gives no full global batch of '
                       f'{batch_size} x {shard_count} processes = {self.global_batch_size}')
    self._epoch = 0
    self._position = 0
    self._orders: dict[int, np.ndarray] = {}

  @property
  def num_batches(self) -> int | None:
    """Batches in one pass (None when repeating forever)."""
    return None if self.repeat else self.num_records // self.global_batch_size

  def _order(self, epoch: int) -> np.ndarray:
    """Permutation of range(N) for `epoch` ([N] int32 or int64), cached while it is in use."""
    if epoch not in self._orders:
      dtype = np.int32 if self.num_records < 2**31 else np.int64
      order = np.arange(self.num_records, dtype=dtype)
      if self.shuffle:
        np.random.default_rng([self.seed, epoch]).shuffle(order)
      self._orders[epoch] = order
    return self._orders[epoch]

  def _stream(self, start: int, stop: int) -> np.ndarray:
    """Records at stream positions [start, stop), counted from the start of the current epoch."""
    parts = []
    while start < stop:
      epoch, offset = divmod(start, self.num_records)
      take = min(stop - start, self.num_records - offset)
      parts.append(self._order(self._epoch + epoch)[offset:offset + take])
      start += take
    return np.concatenate(parts).astype(np.int64)

  def next_indices(self) -> np.ndarray:
    """Indices [B] of the next batch; StopIteration at the end of a one-pass stream."""
    if not self.repeat and self._position + self.global_batch_size > self.num_records:
      raise StopIteration
    start = self._position + self.shard_index * self.batch_size
    indices = self._stream(start, start + self.batch_size)
    self._position += self.global_batch_size
    if self.repeat:
      epochs, self._position = divmod(self._position, self.num_records)
      self._epoch += epochs
      self._orders = {e: o for e, o in self._orders.items() if e >= self._epoch}
    return indices

  def get_state(self) -> dict[str, int]:
    return {'epoch': self._epoch, 'position': self._position, 'num_records': self.num_records}

  def set_state(self, state: dict[str, Any]) -> None:
    if set(state) != {'epoch', 'position', 'num_records'}:
      raise ValueError(f'bad data iterator state {state!r}; expected keys epoch, position, num_records')
    if int(state['num_records']) != self.num_records:
      raise ValueError(f'data iterator state is for {state["num_records"]} records but this dataset has '
                       f'{self.num_records}: the data or its config changed since the state was saved')
    epoch, position = int(state['epoch']), int(state['position'])
    if epoch < 0 or not 0 <= position <= self.num_records or (self.repeat and position == self.num_records):
      raise ValueError(f'bad data iterator state epoch={epoch}, position={position} for '
                       f'{self.num_records} records')
    if not self.repeat and epoch != 0:
      raise ValueError(f'bad data iterator state epoch={epoch} for a one-pass split; must be 0')
    self._epoch, self._position = epoch, position
    self._orders = {}


class RecordDataset:
  """A `Dataset`: an IndexSampler plus `fetch(indices [B]) -> batch dict`."""

  def __init__(self, sampler: IndexSampler, fetch: Callable[[np.ndarray], dict[str, np.ndarray]]):
    self.sampler = sampler
    self._fetch = fetch

  @property
  def num_batches(self) -> int | None:
    return self.sampler.num_batches

  def __iter__(self) -> RecordDataset:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return self._fetch(self.sampler.next_indices())

  def get_state(self) -> dict[str, int]:
    return self.sampler.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self.sampler.set_state(state)


def split_dataset(num_records: int, split: str, fetch: Callable[[np.ndarray], dict[str, np.ndarray]], *,
                  batch_size: int, seed: int, shard_index: int, shard_count: int) -> RecordDataset:
  """'train': shuffled per epoch, repeated forever; 'validation' / 'test': one pass in order."""
  train = split == 'train'
  index_sampler = IndexSampler(num_records, batch_size=batch_size, seed=seed, shuffle=train, repeat=train,
                               shard_index=shard_index, shard_count=shard_count)
  return RecordDataset(index_sampler, fetch)
