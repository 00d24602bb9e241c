"""Character-level text ('chars', 'text8'): windows of L tokens over a normalised corpus (text_corpus.py).

Splits are contiguous character ranges (train first, then validation, then test). Train records are all windows
starting at multiples of `train_stride` (1 = every overlapping window, as MD4's text8 pipeline), shuffled per epoch;
eval records are the non-overlapping L-chunks of the split in order, the tail shorter than L dropped.

config.data keys:
  name: 'chars' or 'text8'.
  path: 'chars': a .txt / .txt.gz / .zip file, None = the built-in demo corpus (pydoc_data.topics).
        'text8': text8.zip or the extracted 'text8' file; None = `download_dir`/text8.zip, downloaded if absent.
  seq_len: L, characters per example (256 for text8).
  train_stride: distance between consecutive train window starts (1 = all overlapping windows).
  train_fraction, validation_fraction: split sizes as fractions of the corpus (0.9, 0.05; test gets the rest).
  download_dir ('text8' only): where text8.zip is looked for and downloaded to; None = ~/.cache/md4_jax.
  download_timeout_s ('text8' only): socket timeout of the download.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request

import ml_collections
import numpy as np

from md4_jax.data import sampler as sampler_lib
from md4_jax.data import text_corpus
from md4_jax.data.interface import DataInfo, DataNotFoundError, DatasetSpec, split_bounds

TEXT8_URL = 'http://mattmahoney.net/dc/text8.zip'
_CHARS_HOW = 'point config.data.path at a .txt, .txt.gz or .zip file, or set it to None for the built-in corpus'
_TEXT8_HOW = (f'download {TEXT8_URL} and set config.data.path to it (or to the extracted text8 file), or put '
              'text8.zip into config.data.download_dir')


def chars_default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'name': 'chars', 'path': None, 'seq_len': 256, 'train_stride': 1,
      'train_fraction': 0.9, 'validation_fraction': 0.05,
  })


def text8_default_config() -> ml_collections.ConfigDict:
  config = chars_default_config()
  config.name = 'text8'
  config.download_dir = None
  config.download_timeout_s = 60.0
  return config


def char_info(config: ml_collections.ConfigDict) -> DataInfo:
  return DataInfo(vocab_size=text_corpus.VOCAB_SIZE, data_shape=(int(config.seq_len),), num_classes=0,
                  decode=text_corpus.decode_chars, encode=text_corpus.encode_chars)


def text8_path(config: ml_collections.ConfigDict) -> str:
  """config.data.path, else download_dir/text8.zip, downloaded (atomically) when missing."""
  if config.path is not None:
    return config.path
  download_dir = os.path.expanduser(config.download_dir or '~/.cache/md4_jax')
  path = os.path.join(download_dir, 'text8.zip')
  if os.path.exists(path):
    return path
  os.makedirs(download_dir, exist_ok=True)
  partial = f'{path}.partial.{os.getpid()}'
  try:
    with urllib.request.urlopen(TEXT8_URL, timeout=config.download_timeout_s) as response, open(partial, 'wb') as f:
      while chunk := response.read(1 << 20):
        f.write(chunk)
    os.replace(partial, path)
  except (OSError, urllib.error.URLError) as e:
    if os.path.exists(partial):
      os.remove(partial)
    raise DataNotFoundError(f'text8 is not at {path!r} and downloading {TEXT8_URL} failed ({e}); '
                            f'{_TEXT8_HOW}') from e
  return path


def make_chars(config: ml_collections.ConfigDict, split: str, *, batch_size: int, seed: int, shard_index: int = 0,
               shard_count: int = 1) -> sampler_lib.RecordDataset:
  """Window dataset over the normalised corpus: 'chars' config.path (None: built-in), 'text8' `text8_path`."""
  if config.name == 'text8':
    corpus_path, how_to_obtain = text8_path(config), _TEXT8_HOW
  else:
    corpus_path, how_to_obtain = config.path, _CHARS_HOW
  seq_len, stride = int(config.seq_len), int(config.train_stride)
  if seq_len < 1 or stride < 1:
    raise ValueError(f'seq_len={seq_len}, train_stride={stride}; both must be positive ints')
  corpus = text_corpus.load_corpus(corpus_path, how_to_obtain)
  start, stop = split_bounds(corpus.size, config.train_fraction, config.validation_fraction)[split]
  tokens = corpus[start:stop]  # [N_split]
  step = stride if split == 'train' else seq_len
  if tokens.size < seq_len:
    name = corpus_path or text_corpus.BUILTIN_NAME
    raise ValueError(f'corpus {name!r} has {corpus.size} characters after normalisation, so its {split} split has '
                     f'{tokens.size}, fewer than seq_len={seq_len}; use a larger corpus or a smaller seq_len')
  num_records = (tokens.size - seq_len) // step + 1
  offsets = np.arange(seq_len)

  def fetch(indices: np.ndarray) -> dict[str, np.ndarray]:
    return {'x': tokens[indices[:, None] * step + offsets].astype(np.int32)}  # [B, L]

  return sampler_lib.split_dataset(num_records, split, fetch, batch_size=batch_size, seed=seed,
                                   shard_index=shard_index, shard_count=shard_count)


CHARS = DatasetSpec(default_config=chars_default_config, info=char_info, make=make_chars)
TEXT8 = DatasetSpec(default_config=text8_default_config, info=char_info, make=make_chars)
