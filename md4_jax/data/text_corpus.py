"""Character corpora normalised the text8 way: 27 symbols, a-z -> 0-25, space -> 26.

Normalisation works on the raw bytes: ASCII letters are lower-cased, every other byte (digits, punctuation,
newlines and every byte of a non-ASCII character, so also letters such as 'é' or 'ß') becomes a space, and runs of
spaces collapse to one. Leading and trailing single spaces are kept, as in text8 itself.
"""
from __future__ import annotations

import functools
import gzip
import os
import zipfile

import numpy as np

from md4_jax.data.interface import DataNotFoundError, decode_rows

ALPHABET = 'abcdefghijklmnopqrstuvwxyz '
VOCAB_SIZE = len(ALPHABET)  # V = 27; the mask id is 27
SPACE_ID = 26
MASK_CHAR = '_'  # shown for the mask id by `decode_chars`

_BYTE_TO_ID = np.full(256, SPACE_ID, np.uint8)
_BYTE_TO_ID[ord('a'):ord('z') + 1] = np.arange(26)
_BYTE_TO_ID[ord('A'):ord('Z') + 1] = np.arange(26)
_ID_TO_CHAR = np.array(list(ALPHABET + MASK_CHAR))

BUILTIN_NAME = '<builtin: pydoc_data.topics>'


def normalize_bytes(raw: bytes) -> np.ndarray:
  """Raw bytes -> token ids [N] uint8 in [0, 27) (module docstring)."""
  ids = _BYTE_TO_ID[np.frombuffer(raw, np.uint8)]
  space = ids == SPACE_ID
  repeated_space = space[1:] & space[:-1]
  return ids[np.concatenate([[True], ~repeated_space])] if ids.size else ids


def builtin_corpus_bytes() -> bytes:
  """The demo corpus: every topic string of the standard library's `pydoc_data.topics`, sorted by topic."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  return '\n'.join(topics.topics[k] for k in sorted(topics.topics)).encode('utf-8')


def read_text_bytes(path: str, how_to_obtain: str) -> bytes:
  """Bytes of a .txt (any other suffix too), .gz or .zip (its largest member) file.

  Raises:
    DataNotFoundError: `path` does not exist (the message says `how_to_obtain` the data).
    ValueError: the file is a directory, or a truncated / malformed archive.
  """
  if not os.path.exists(path):
    raise DataNotFoundError(f'data file {path!r} does not exist; {how_to_obtain}')
  if os.path.isdir(path):
    raise ValueError(f'data path {path!r} is a directory; expected a .txt, .txt.gz or .zip file')
  try:
    if path.endswith('.gz'):
      with gzip.open(path, 'rb') as f:
        return f.read()
    if path.endswith('.zip'):
      with zipfile.ZipFile(path) as z:
        members = [m for m in z.infolist() if not m.is_dir()]
        if not members:
          raise ValueError(f'zip archive {path!r} holds no file; {how_to_obtain}')
        return z.read(max(members, key=lambda m: m.file_size))
    with open(path, 'rb') as f:
      return f.read()
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f'cannot read {path!r} ({type(e).__name__}: {e}): the file is truncated or malformed; '
                     f'{how_to_obtain}') from e


@functools.lru_cache(maxsize=4)
def _load_cached(path: str | None, how_to_obtain: str, mtime_ns: int, size: int) -> np.ndarray:
  del mtime_ns, size  # only part of the cache key: a changed file is read again
  raw = builtin_corpus_bytes() if path is None else read_text_bytes(path, how_to_obtain)
  ids = normalize_bytes(raw)
  if not np.any(ids != SPACE_ID):
    raise ValueError(f'corpus {path!r} is empty: its {len(raw)} bytes hold no letter a-z')
  ids.flags.writeable = False
  return ids


def load_corpus(path: str | None, how_to_obtain: str) -> np.ndarray:
  """Normalised corpus [N] uint8 (read-only, cached per file); path None -> the built-in demo corpus."""
  if path is None:
    return _load_cached(None, '', 0, 0)
  path = os.path.abspath(os.path.expanduser(path))
  stat = os.stat(path) if os.path.isfile(path) else None
  return _load_cached(path, how_to_obtain, stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)


def encode_chars(text: str) -> np.ndarray:
  """Text -> token ids int32 [n], normalised as the corpora (its UTF-8 bytes through `normalize_bytes`)."""
  return normalize_bytes(text.encode('utf-8')).astype(np.int32)


def decode_chars(tokens: np.ndarray) -> str | np.ndarray:
  """Token ids [..., L] -> str (for [L]) or array of str [...]; the mask id shows as MASK_CHAR."""
  return decode_rows(tokens, VOCAB_SIZE + 1, lambda row: ''.join(_ID_TO_CHAR[row]))
