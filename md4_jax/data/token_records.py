"""On-disk format of pre-tokenised text: fixed-length token blocks in ArrayRecord shards plus a metadata.json.

A directory holds, per split, files `{split}-{i:05d}.array_record` whose records are blocks of `seq_len` little-endian
uint16 token ids, and `metadata.json` = {'format', 'seq_len', 'vocab_size', 'splits': {split: {'files': [...],
'num_records': n}}, ...}. metadata.json is written last, so its presence marks a complete directory. Reading uses
grain's ArrayRecordDataSource (random access, no TensorFlow).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

FORMAT = 'md4_jax.token_records.v1'
METADATA = 'metadata.json'


class BlockPacker:
  """Concatenates token arrays and cuts them into blocks of seq_len, keeping the incomplete tail for later."""

  def __init__(self, seq_len: int):
    self.seq_len = seq_len
    self._tail = np.zeros([0], np.uint16)

  def add(self, tokens: np.ndarray) -> np.ndarray:
    """Appends tokens [n]; returns the completed blocks [k, seq_len] uint16."""
    stream = np.concatenate([self._tail, tokens.astype(np.uint16)])
    num_blocks = stream.size // self.seq_len
    self._tail = stream[num_blocks * self.seq_len:]
    return stream[:num_blocks * self.seq_len].reshape(num_blocks, self.seq_len)

  @property
  def pending(self) -> int:
    """Tokens waiting in the incomplete tail (dropped if no more come)."""
    return self._tail.size


class ShardWriter:
  """Writes blocks of one split into ArrayRecord shards of at most records_per_shard records."""

  def __init__(self, directory: str, split: str, records_per_shard: int):
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    self._module = array_record_module
    os.makedirs(directory, exist_ok=True)
    self._directory, self._split, self._records_per_shard = directory, split, records_per_shard
    self.files: list[str] = []
    self.num_records = 0
    self._writer = None
    self._in_shard = 0

  def write(self, blocks: np.ndarray) -> None:
    """blocks [k, L] uint16."""
    for block in blocks:
      if self._writer is None or self._in_shard == self._records_per_shard:
        self._close_shard()
        self.files.append(f'{self._split}-{len(self.files):05d}.array_record')
        self._writer = self._module.ArrayRecordWriter(os.path.join(self._directory, self.files[-1]), 'group_size:1')
      self._writer.write(block.astype('<u2').tobytes())
      self._in_shard += 1
      self.num_records += 1

  def _close_shard(self) -> None:
    if self._writer is not None:
      self._writer.close()
    self._writer, self._in_shard = None, 0

  def close(self) -> dict[str, Any]:
    """Closes the last shard; returns the split's metadata entry."""
    self._close_shard()
    return {'files': self.files, 'num_records': self.num_records}


def write_metadata(directory: str, *, seq_len: int, vocab_size: int, splits: dict[str, dict[str, Any]],
                   **extra: Any) -> dict[str, Any]:
  metadata = {'format': FORMAT, 'seq_len': seq_len, 'vocab_size': vocab_size, 'splits': splits, **extra}
  partial = os.path.join(directory, METADATA + '.partial')
  with open(partial, 'w') as f:
    json.dump(metadata, f, indent=1)
  os.replace(partial, os.path.join(directory, METADATA))
  return metadata


def read_metadata(directory: str, how_to_obtain: str) -> dict[str, Any]:
  """metadata.json of a complete directory; DataNotFoundError / ValueError naming the path otherwise."""
  from md4_jax.data.interface import DataNotFoundError  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(directory):
    raise DataNotFoundError(f'token-record directory {directory!r} does not exist; {how_to_obtain}')
  path = os.path.join(directory, METADATA)
  if not os.path.exists(path):
    raise DataNotFoundError(f'{path!r} is missing: {directory!r} is not a finished token-record directory; '
                            f'{how_to_obtain}')
  try:
    with open(path) as f:
      metadata = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f'cannot read {path!r} ({e}); {how_to_obtain}') from e
  if metadata.get('format') != FORMAT:
    raise ValueError(f'{path!r} has format {metadata.get("format")!r}, expected {FORMAT!r}; {how_to_obtain}')
  return metadata


class TokenRecords:
  """Random access to the blocks of one split: `fetch(indices [B]) -> [B, L] int32`."""

  def __init__(self, directory: str, split: str, how_to_obtain: str):
    metadata = read_metadata(directory, how_to_obtain)
    if split not in metadata['splits']:
      raise ValueError(f'{directory!r} has no split {split!r}; it has: {", ".join(metadata["splits"])}')
    entry = metadata['splits'][split]
    paths = [os.path.join(directory, name) for name in entry['files']]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing or not paths:
      raise ValueError(f'split {split!r} of {directory!r} lacks its shard files {missing or "(none listed)"}; '
                       f'{how_to_obtain}')
    import grain  # pylint: disable=g-import-not-at-top
    try:
      self._source = grain.sources.ArrayRecordDataSource(paths)
      num_records = len(self._source)
    except Exception as e:  # array_record raises RuntimeError / ValueError variants for damaged files
      raise ValueError(f'cannot open the shards of split {split!r} in {directory!r} ({type(e).__name__}: {e}): '
                       f'truncated or malformed; '
                       f'{how_to_obtain}') from e
    if num_records != entry['num_records']:
      raise ValueError(f'split {split!r} of {directory!r} has {num_records} records but metadata.json says '
                       f'{entry["num_records"]}: truncated or mixed shards; {how_to_obtain}')
    self.metadata = metadata
    self.seq_len = int(metadata['seq_len'])
    self.num_records = num_records

  def fetch(self, indices: np.ndarray) -> np.ndarray:
    records = self._source.__getitems__(indices.tolist())  # B x bytes
    tokens = np.frombuffer(b''.join(records), '<u2')
    if tokens.size != len(records) * self.seq_len:
      raise ValueError(f'records {indices.tolist()} are not {self.seq_len}-token blocks: the shards are malformed')
    return tokens.reshape(len(records), self.seq_len).astype(np.int32)  # [B, L]
