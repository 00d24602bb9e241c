"""'chars' and 'text8' pipelines: normalisation, splits, windows, resume, sharding, errors."""
from __future__ import annotations

import gzip
import io
import json
import os
import pathlib
import subprocess
import sys
import urllib.error
import zipfile

import numpy as np
import pytest

import md4_jax.data as data
from md4_jax.data import chars, text_corpus

KJV = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'kjv.txt.gz'


def _text(ids: np.ndarray) -> str:
  return ''.join(text_corpus.ALPHABET[i] for i in ids)


def _corpus_file(tmp_path: pathlib.Path, n: int, seed: int = 0, name: str = 'c.txt') -> tuple[str, str]:
  """A random a-z/space text of n normalised characters (no double spaces); returns (path, text)."""
  rng = np.random.default_rng(seed)
  words = [''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz'), rng.integers(1, 8))) for _ in range(n)]
  text = ' '.join(words)[:n]
  text = text[:-1] + 'z' if text.endswith(' ') else text
  path = tmp_path / name
  path.write_text(text)
  return str(path), text


def _config(name: str = 'chars', **overrides):
  config = data.default_data_config(name)
  config.update(overrides)
  return config


def test_normalisation_maps_case_punctuation_and_non_ascii():
  raw = 'Hello,  World!\n\u00e9t\u00e9 ABC \u212a\u0130x  '.encode('utf-8')  # é, KELVIN SIGN, dotted capital I
  assert _text(text_corpus.normalize_bytes(raw)) == 'hello world t abc x '
  assert text_corpus.normalize_bytes(b'').size == 0
  assert _text(text_corpus.normalize_bytes(b'\xff\xfe12')) == ' '  # not UTF-8: every byte >= 0x80 is a space


def test_builtin_corpus_is_normalised_pydoc_topics():
  ids = text_corpus.load_corpus(None, '')
  np.testing.assert_array_equal(ids, text_corpus.normalize_bytes(text_corpus.builtin_corpus_bytes()))
  assert ids.max() == 26 and not np.any((ids[1:] == 26) & (ids[:-1] == 26))


def test_decode_text_batch_and_mask():
  info = data.dataset_info(_config(seq_len=3))
  assert (info.vocab_size, info.data_shape, info.num_classes) == (27, (3,), 0)
  assert info.decode(np.array([7, 8, 26])) == 'hi '
  np.testing.assert_array_equal(info.decode(np.array([[0, 1, 27], [25, 26, 0]])), ['ab_', 'z a'])
  with pytest.raises(ValueError, match=r'in \[0, 27\]'):
    info.decode(np.array([28]))


def test_split_bounds_are_the_text8_split():
  assert data.split_bounds(100_000_000, 0.9, 0.05) == {
      'train': (0, 90_000_000), 'validation': (90_000_000, 95_000_000), 'test': (95_000_000, 100_000_000)}
  with pytest.raises(ValueError, match='train_fraction=0.9, validation_fraction=0.2'):
    data.split_bounds(100, 0.9, 0.2)


def test_train_epoch_reads_every_overlapping_window_once(tmp_path):
  path, text = _corpus_file(tmp_path, 1000)
  config = _config(path=path, seq_len=8)
  train_text = text[:900]
  num_windows = 900 - 8 + 1  # 893 = 19 * 47
  ds = data.make_dataset(config, 'train', batch_size=19, seed=0)
  got = [''.join(row) for _ in range(47) for row in np.array(list(text_corpus.ALPHABET))[next(ds)['x']]]
  assert sorted(got) == sorted(train_text[i:i + 8] for i in range(num_windows))
  assert got != [train_text[i:i + 8] for i in range(num_windows)]  # shuffled


def test_train_stride_takes_a_strided_subset(tmp_path):
  path, text = _corpus_file(tmp_path, 1000)
  ds = data.make_dataset(_config(path=path, seq_len=10, train_stride=7), 'train', batch_size=128, seed=0)
  batch = next(ds)['x']  # (900 - 10) // 7 + 1 = 128 windows: exactly one epoch
  assert sorted(data.dataset_info(_config()).decode(batch)) == sorted(text[i:i + 10] for i in range(0, 891, 7))


@pytest.mark.parametrize('split,start,stop', [('validation', 900, 950), ('test', 950, 1000)])
def test_eval_is_non_overlapping_chunks_in_order(tmp_path, split, start, stop):
  path, text = _corpus_file(tmp_path, 1000)
  ds = data.make_dataset(_config(path=path, seq_len=4), split, batch_size=3, seed=0)
  batches = list(ds)  # 50 // 4 = 12 chunks -> 4 batches of 3, the 2 characters after them dropped
  assert len(batches) == ds.num_batches == 4
  assert ''.join(_text(b.ravel()) for b in (x['x'] for x in batches)) == text[start:start + 48]


def test_resume_and_sharding_through_make_dataset(tmp_path):
  path, _ = _corpus_file(tmp_path, 3000)
  config = _config(path=path, seq_len=16)
  ds = data.make_dataset(config, 'train', batch_size=8, seed=4)
  for _ in range(30):
    next(ds)
  state = json.loads(json.dumps(ds.get_state()))
  expected = [next(ds)['x'] for _ in range(5)]
  fresh = data.make_dataset(config, 'train', batch_size=8, seed=4)
  fresh.set_state(state)
  np.testing.assert_array_equal([next(fresh)['x'] for _ in range(5)], expected)
  shards = [data.make_dataset(config, 'train', batch_size=4, seed=4, shard_index=k, shard_count=2)
            for k in range(2)]
  for s in shards:
    s.set_state(state)
  np.testing.assert_array_equal([np.concatenate([next(s)['x'] for s in shards]) for _ in range(5)], expected)


@pytest.mark.parametrize('suffix', ['.txt.gz', '.zip'])
def test_compressed_files_read_like_plain_text(tmp_path, suffix):
  path, text = _corpus_file(tmp_path, 500)
  packed = str(tmp_path / f'c{suffix}')
  if suffix == '.zip':
    with zipfile.ZipFile(packed, 'w') as z:
      z.writestr('c.txt', text)
  else:
    with gzip.open(packed, 'wt') as f:
      f.write(text)
  np.testing.assert_array_equal(text_corpus.load_corpus(packed, ''), text_corpus.load_corpus(path, ''))


def test_missing_empty_short_and_corrupt_files_raise_clearly(tmp_path):
  missing = str(tmp_path / 'nope.txt')
  with pytest.raises(data.DataNotFoundError, match=f'{missing}.*does not exist.*config.data.path'):
    data.make_dataset(_config(path=missing), 'train', batch_size=1, seed=0)
  (tmp_path / 'empty.txt').write_text('123 !?\n')
  with pytest.raises(ValueError, match=r'empty.txt.*is empty: its 7 bytes hold no letter'):
    data.make_dataset(_config(path=str(tmp_path / 'empty.txt')), 'train', batch_size=1, seed=0)
  path, _ = _corpus_file(tmp_path, 100)
  with pytest.raises(ValueError, match=r'c.txt.*has 100 characters.*validation split has 5, fewer than seq_len=8'):
    data.make_dataset(_config(path=path, seq_len=8), 'validation', batch_size=1, seed=0)
  (tmp_path / 'bad.txt.gz').write_bytes(gzip.compress(b'hello world' * 100)[:30])
  with pytest.raises(ValueError, match='bad.txt.gz.*truncated or malformed'):
    text_corpus.load_corpus(str(tmp_path / 'bad.txt.gz'), '')
  (tmp_path / 'bad.zip').write_bytes(b'PK not a zip')
  with pytest.raises(ValueError, match='bad.zip.*truncated or malformed'):
    text_corpus.load_corpus(str(tmp_path / 'bad.zip'), '')


def test_unknown_names_raise_with_the_valid_options():
  with pytest.raises(ValueError, match="unknown dataset 'text9'; valid: .*chars.*text8"):
    data.default_data_config('text9')
  with pytest.raises(ValueError, match="unknown split 'valid'; valid: train, validation, test"):
    data.make_dataset(_config(), 'valid', batch_size=1, seed=0)


def _text8_zip(path: pathlib.Path, n: int = 2000) -> str:
  text = ' ' + _corpus_file(path.parent, n - 1, seed=1, name='t8src')[1]
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('text8', text)
  return text


def test_text8_from_zip_extracted_file_and_download_dir(tmp_path):
  text = _text8_zip(tmp_path / 'text8.zip')
  (tmp_path / 'text8').write_text(text)
  for config in (_config('text8', path=str(tmp_path / 'text8.zip'), seq_len=20),
                 _config('text8', path=str(tmp_path / 'text8'), seq_len=20),
                 _config('text8', download_dir=str(tmp_path), seq_len=20)):
    batch = next(data.make_dataset(config, 'test', batch_size=5, seed=0))['x']
    assert _text(batch.ravel()) == text[1900:2000]


def test_text8_download_writes_the_cache_or_fails_clearly(tmp_path, monkeypatch):
  text = _text8_zip(tmp_path / 'src.zip')
  payload = (tmp_path / 'src.zip').read_bytes()
  monkeypatch.setattr(chars.urllib.request, 'urlopen', lambda url, timeout: io.BytesIO(payload))
  config = _config('text8', download_dir=str(tmp_path / 'cache'), seq_len=20)
  batch = next(data.make_dataset(config, 'validation', batch_size=5, seed=0))['x']
  assert _text(batch.ravel()) == text[1800:1900]
  assert os.listdir(tmp_path / 'cache') == ['text8.zip']

  def refuse(url, timeout):
    raise urllib.error.URLError('no network')
  monkeypatch.setattr(chars.urllib.request, 'urlopen', refuse)
  config.download_dir = str(tmp_path / 'other')
  with pytest.raises(data.DataNotFoundError, match=r'mattmahoney.net/dc/text8.zip failed.*no network.*download'):
    data.make_dataset(config, 'train', batch_size=1, seed=0)
  assert os.listdir(tmp_path / 'other') == []


@pytest.mark.skipif(not KJV.exists(), reason='shared/data/kjv.txt.gz is absent')
def test_kjv_corpus():
  config = _config(path=str(KJV))
  assert text_corpus.load_corpus(config.path, '').size == 4_013_873
  first = data.make_dataset(config, 'validation', batch_size=1, seed=0)
  assert len(data.dataset_info(config).decode(next(first)['x'][0])) == 256


def test_import_needs_only_numpy():
  code = ('import sys, md4_jax.data; '
          'print(sorted(m for m in ("jax", "grain", "tensorflow", "tensorflow_datasets", "tiktoken", "sklearn", '
          '"array_record") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.stdout.strip() == '[]'
