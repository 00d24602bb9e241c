"""Streams of text documents from local files or the Hugging Face hub, never holding a whole corpus in memory.

Local formats (by suffix; a directory is searched recursively, a pattern with * is a glob, files go in sorted order):
  .jsonl / .jsonl.gz / .json: one JSON object per line, the document in `text_field`; blank lines are skipped.
  .parquet: the `text_field` column (needs pyarrow), read batch by batch.
  .txt / .txt.gz: the whole file is one document (the layout of the original OpenWebText release).
Bytes that are not valid UTF-8 are replaced by U+FFFD.
"""
from __future__ import annotations

import glob
import gzip
import json
import os
from typing import Iterator, Sequence

from md4_jax.data.interface import DataNotFoundError

SUFFIXES = ('.jsonl', '.jsonl.gz', '.json', '.parquet', '.txt', '.txt.gz')


def expand_paths(inputs: Sequence[str], how_to_obtain: str) -> list[str]:
  """Files, directories and globs -> the sorted list of readable files."""
  files = []
  for item in inputs:
    item = os.path.expanduser(item)
    if any(c in item for c in '*?['):
      matches = sorted(glob.glob(item, recursive=True))
      if not matches:
        raise DataNotFoundError(f'no file matches {item!r}; {how_to_obtain}')
      files.extend(m for m in matches if os.path.isfile(m))
    elif os.path.isdir(item):
      found = sorted(os.path.join(root, name) for root, _, names in os.walk(item) for name in names
                     if name.endswith(SUFFIXES))
      if not found:
        raise DataNotFoundError(f'directory {item!r} holds no {", ".join(SUFFIXES)} file; {how_to_obtain}')
      files.extend(found)
    elif os.path.isfile(item):
      files.append(item)
    else:
      raise DataNotFoundError(f'input {item!r} does not exist; {how_to_obtain}')
  for path in files:
    if not path.endswith(SUFFIXES):
      raise ValueError(f'cannot read {path!r}: unknown file type; valid suffixes: {", ".join(SUFFIXES)}')
  return files


def _open_binary(path: str):
  return gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')


def _iter_jsonl(path: str, text_field: str) -> Iterator[str]:
  with _open_binary(path) as f:
    try:
      for line_number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line.decode('utf-8', errors='replace'))
          yield record[text_field]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise ValueError(f'{path}:{line_number} is not a JSON object with a {text_field!r} string field '
                           f'({type(e).__name__}: {e})') from e
    except (EOFError, gzip.BadGzipFile) as e:
      raise ValueError(f'cannot read {path!r} ({e}): truncated or malformed') from e


def _iter_parquet(path: str, text_field: str) -> Iterator[str]:
  try:
    import pyarrow  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'reading {path!r} needs `pip install pyarrow`') from e
  try:
    parquet = pq.ParquetFile(path)
    if text_field not in parquet.schema_arrow.names:
      raise ValueError(f'{path!r} has no column {text_field!r}; columns: {", ".join(parquet.schema_arrow.names)}')
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
      yield from batch.column(0).to_pylist()
  except (OSError, pyarrow.lib.ArrowException) as e:
    raise ValueError(f'cannot read {path!r} ({e}): truncated or malformed') from e


def _iter_txt(path: str) -> Iterator[str]:
  try:
    with _open_binary(path) as f:
      yield f.read().decode('utf-8', errors='replace')
  except (EOFError, gzip.BadGzipFile) as e:
    raise ValueError(f'cannot read {path!r} ({e}): truncated or malformed') from e


def iter_local_documents(files: Sequence[str], text_field: str = 'text') -> Iterator[str]:
  """Documents of `files` (from `expand_paths`) in order."""
  for path in files:
    if path.endswith('.parquet'):
      yield from _iter_parquet(path, text_field)
    elif path.endswith(('.txt', '.txt.gz')):
      yield from _iter_txt(path)
    else:
      yield from _iter_jsonl(path, text_field)


def iter_hub_documents(name: str, split: str, text_field: str = 'text', config_name: str | None = None
                       ) -> Iterator[str]:
  """Streams `text_field` of a Hugging Face hub dataset (needs `pip install datasets` and network access)."""
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'reading {name!r} from the Hugging Face hub needs `pip install datasets`; without network, '
                      'pass local files instead') from e
  try:
    stream = datasets.load_dataset(name, config_name, split=split, streaming=True)
  except Exception as e:  # datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError, ...
    raise DataNotFoundError(f'cannot stream {name!r} (config {config_name!r}, split {split!r}) from the Hugging '
                            f'Face hub ({type(e).__name__}: {e}); download it and pass local files instead') from e
  for record in stream:
    yield record[text_field]
