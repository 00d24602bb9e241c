"""SEDD detokenisers (exact strings) and the zero-shot block pipeline on local files."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

import md4_jax.data as data
from md4_jax.data import detokenizers


def test_wikitext_detokenizer():
  assert detokenizers.wikitext_detokenizer(' = = Reception = = \n') == ' == Reception ==\n'
  assert (detokenizers.wikitext_detokenizer(" The game 's 1 @,@ 000 units @-@ sold ( in Japan ) . \n")
          == " The game's 1,000 units-sold (in Japan).\n")
  assert detokenizers.wikitext_detokenizer('3 @.@ 5 " big " 10 ° C ; so') == '3.5 "big" 10°C; so'


def test_ptb_lm1b_lambada_detokenizers():
  assert (detokenizers.ptb_detokenizer("the company 's N shares \\/ N it did n't <unk> $ N")
          == "the company's 1 shares / 1 it didn't ? $ N")
  assert (detokenizers.lm1b_detokenizer('He said " hello , world " ( see http : / / x.com ) and it \'s ok .')
          == 'He said "hello, world" (see http://x.com) and it\'s ok.')
  assert detokenizers.lambada_detokenizer('\u201cHi,\u201d she said.  \n') == '\n"Hi," she said.'


def _config(name: str, **overrides):
  config = data.default_data_config(name)
  config.update(overrides)
  return config


def _reference(rows: list[str], detokenize, group: int, seq_len: int) -> np.ndarray:
  tiktoken_gpt2 = pytest.importorskip('md4_jax.data.gpt2_tokenizer').gpt2_encoding()
  tokens = [tiktoken_gpt2.encode_ordinary(detokenize(r)) + [50256] for r in rows]
  blocks = []
  for start in range(0, len(tokens), group):
    stream = sum(tokens[start:start + group], [])
    blocks += [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
  return np.array(blocks, np.int32)


def test_wikitext_file_rows_groups_and_order(tmp_path):
  pytest.importorskip('tiktoken')
  lines = [' = Valkyria Chronicles III = \n', ' \n', " Senjō no Valkyria 3 : it 's a game @-@ series . \n",
           '\n', ' = = Gameplay = = \n', ' The ( battle ) system , " BLiTZ " , is 1 @,@ 200 years old . \n'] * 3
  path = tmp_path / 'wiki.test.raw'
  path.write_text(''.join(lines), encoding='utf-8')
  config = _config('wikitext2', path=str(path), seq_len=8, group_rows=4)
  rows = [line if line.strip() else '' for line in lines]
  expected = _reference(rows, detokenizers.wikitext_detokenizer, 4, 8)
  ds = data.make_dataset(config, 'test', batch_size=2, seed=0)
  got = np.concatenate([b['x'] for b in ds])
  np.testing.assert_array_equal(got, expected[:len(expected) // 2 * 2])
  assert data.dataset_info(config).decode(got[0]).startswith(' = Valkyria')


def test_lambada_jsonl_and_ptb_lines(tmp_path):
  pytest.importorskip('tiktoken')
  texts = ['\u201cWhere is it?\u201d she asked. He pointed at the door', 'Plain story about a cat named Tom'] * 4
  with gzip.open(tmp_path / 'lambada_test.jsonl.gz', 'wt') as f:
    f.writelines(json.dumps({'text': t}) + '\n' for t in texts)
  config = _config('lambada', path=str(tmp_path / 'lambada_test.jsonl.gz'), seq_len=16, group_rows=None)
  got = np.concatenate([b['x'] for b in data.make_dataset(config, 'test', batch_size=1, seed=0)])
  np.testing.assert_array_equal(got, _reference(texts, detokenizers.lambada_detokenizer, len(texts), 16))
  (tmp_path / 'ptb.test.txt').write_text(" no it was n't black monday \n but while the new york stock N \n" * 3)
  config = _config('ptb', path=str(tmp_path / 'ptb.test.txt'), seq_len=5)
  got = np.concatenate([b['x'] for b in data.make_dataset(config, 'test', batch_size=1, seed=0)])
  rows = ["no it was n't black monday", 'but while the new york stock N'] * 3
  np.testing.assert_array_equal(got, _reference(rows, detokenizers.ptb_detokenizer, 1000, 5))


def test_zeroshot_errors(tmp_path):
  config = _config('lm1b', path=str(tmp_path / 'missing.txt'))
  with pytest.raises(ValueError, match="split 'test' only, got 'validation'"):
    data.make_dataset(config, 'validation', batch_size=1, seed=0)
  with pytest.raises(data.DataNotFoundError, match='missing.txt.*does not exist.*lm1b test split'):
    data.make_dataset(config, 'test', batch_size=1, seed=0)
  pytest.importorskip('tiktoken')
  (tmp_path / 'empty.txt').write_text('')
  config.path = str(tmp_path / 'empty.txt')
  with pytest.raises(ValueError, match=r"lm1b from .*empty.txt' gave no 1024-token block \(0 rows"):
    data.make_dataset(config, 'test', batch_size=1, seed=0)
  config.detokenizer = 'wiki'
  with pytest.raises(ValueError, match="unknown detokenizer 'wiki'; valid: wikitext, ptb, lm1b, lambada"):
    data.make_dataset(config, 'test', batch_size=1, seed=0)
