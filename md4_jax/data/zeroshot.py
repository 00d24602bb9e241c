"""Zero-shot perplexity sets of the SEDD protocol: LAMBADA, WikiText2, PTB, WikiText103, One Billion Words.

Each row of the test split is detokenised (detokenizers.py), GPT-2-tokenised with EOS appended, and rows are
concatenated in groups of `group_rows` (SEDD tokenises with Hugging Face `map(batched=True)`, whose default batch
is 1000 rows) and cut into seq_len blocks, each group's incomplete tail dropped. (SEDD's `num_proc` workers split
the rows first, which moves a few group boundaries; group_rows=None concatenates the whole split.) The blocks are
read once in order, last incomplete global batch dropped; only the 'test' split exists.

config.data keys:
  name: 'lambada', 'wikitext2', 'ptb', 'wikitext103' or 'lm1b'.
  path: a local copy of the test split, None = the Hugging Face hub (`pip install datasets`, network):
    .jsonl / .jsonl.gz: one JSON object per line, the row in `text_field` (e.g. OpenAI's lambada_test.jsonl);
    any other file (.txt, .raw, .tokens, optionally .gz): one row per line (wiki.test.raw, ptb.test.txt, ...).
  seq_len: L (1024).
  text_field: JSON field / hub column of the row ('text'; PTB 'sentence').
  line_mode: how a line of a text file becomes a row, as the hub builders do: 'keep' (WikiText: the line with its
    newline, a blank line -> '') or 'strip' (line.strip()).
  detokenizer: a key of detokenizers.DETOKENIZERS, or None.
  group_rows: rows concatenated before cutting blocks (1000), None = the whole split.
  hub_name, hub_config, hub_split: where path=None reads from.
"""
from __future__ import annotations

import functools
import gzip
import os
from typing import Iterator

import ml_collections
import numpy as np

from md4_jax.data import documents
from md4_jax.data import gpt2_tokenizer
from md4_jax.data import sampler as sampler_lib
from md4_jax.data import token_records
from md4_jax.data.detokenizers import DETOKENIZERS
from md4_jax.data.interface import DataInfo, DataNotFoundError, DatasetSpec

LINE_MODES = ('keep', 'strip')
_SETS = {  # name: (detokenizer, text_field, line_mode, hub_name, hub_config)
    'lambada': ('lambada', 'text', 'strip', 'EleutherAI/lambada_openai', 'default'),
    'wikitext2': ('wikitext', 'text', 'keep', 'Salesforce/wikitext', 'wikitext-2-raw-v1'),
    'wikitext103': ('wikitext', 'text', 'keep', 'Salesforce/wikitext', 'wikitext-103-raw-v1'),
    'ptb': ('ptb', 'sentence', 'strip', 'ptb-text-only/ptb_text_only', None),
    'lm1b': ('lm1b', 'text', 'strip', 'lm1b', None),
}


def default_config(name: str) -> ml_collections.ConfigDict:
  detokenizer, text_field, line_mode, hub_name, hub_config = _SETS[name]
  return ml_collections.ConfigDict({
      'name': name, 'path': None, 'seq_len': 1024, 'text_field': text_field, 'line_mode': line_mode,
      'detokenizer': detokenizer, 'group_rows': 1000, 'hub_name': hub_name, 'hub_config': hub_config,
      'hub_split': 'test'})


def _iter_lines(path: str, line_mode: str) -> Iterator[str]:
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rt', encoding='utf-8', errors='replace') as f:
      for line in f:
        yield (line if line.strip() else '') if line_mode == 'keep' else line.strip()
  except (EOFError, gzip.BadGzipFile) as e:
    raise ValueError(f'cannot read {path!r} ({e}): truncated or malformed') from e


def _rows(config: ml_collections.ConfigDict) -> Iterator[str]:
  if config.path is None:
    return documents.iter_hub_documents(config.hub_name, config.hub_split, config.text_field, config.hub_config)
  path = os.path.expanduser(config.path)
  if not os.path.isfile(path):
    raise DataNotFoundError(f'zero-shot file {path!r} does not exist; download the {config.name} test split and '
                            'set config.data.path to it, or set it to None to read the Hugging Face hub')
  if path.endswith(('.jsonl', '.jsonl.gz')):
    return documents.iter_local_documents([path], config.text_field)
  return _iter_lines(path, config.line_mode)


@functools.lru_cache(maxsize=2)
def _blocks(key: tuple) -> np.ndarray:
  """The split's blocks [N, L] uint16 (read-only); `key` = the config items plus the file's mtime."""
  config = ml_collections.ConfigDict(dict(key[:-1]))
  detokenize = DETOKENIZERS[config.detokenizer] if config.detokenizer else (lambda text: text)
  rows = [detokenize(row) for row in _rows(config)]
  tokens = gpt2_tokenizer.encode_documents(rows, num_threads=os.cpu_count() or 1)
  group = config.group_rows or max(len(tokens), 1)
  blocks = [token_records.BlockPacker(config.seq_len).add(np.concatenate(tokens[start:start + group]))
            for start in range(0, len(tokens), group)]
  result = np.concatenate(blocks) if blocks else np.zeros([0, config.seq_len], np.uint16)
  if not result.size:
    raise ValueError(f'{config.name} from {config.path or config.hub_name!r} gave no {config.seq_len}-token block '
                     f'({len(rows)} rows, {sum(t.size for t in tokens)} tokens); it is empty or too small')
  result.flags.writeable = False
  return result


def zeroshot_info(config: ml_collections.ConfigDict) -> DataInfo:
  return DataInfo(vocab_size=gpt2_tokenizer.VOCAB_SIZE, data_shape=(int(config.seq_len),), num_classes=0,
                  decode=gpt2_tokenizer.decode_gpt2)


def make_zeroshot(config: ml_collections.ConfigDict, split: str, *, batch_size: int, seed: int,
                  shard_index: int = 0, shard_count: int = 1) -> sampler_lib.RecordDataset:
  if split != 'test':
    raise ValueError(f"zero-shot set {config.name!r} is for evaluation: split 'test' only, got {split!r}")
  if config.line_mode not in LINE_MODES:
    raise ValueError(f'unknown line_mode {config.line_mode!r}; valid: {", ".join(LINE_MODES)}')
  if config.detokenizer is not None and config.detokenizer not in DETOKENIZERS:
    raise ValueError(f'unknown detokenizer {config.detokenizer!r}; valid: {", ".join(DETOKENIZERS)} or None')
  path = os.path.expanduser(config.path) if config.path else None
  mtime = os.stat(path).st_mtime_ns if path and os.path.isfile(path) else 0
  blocks = _blocks(tuple(sorted(config.to_dict().items())) + (mtime,))
  return sampler_lib.split_dataset(len(blocks), split, lambda idx: {'x': blocks[idx].astype(np.int32)},
                                   batch_size=batch_size, seed=seed, shard_index=shard_index,
                                   shard_count=shard_count)


SPECS = {name: DatasetSpec(default_config=functools.partial(default_config, name), info=zeroshot_info,
                           make=make_zeroshot) for name in _SETS}
