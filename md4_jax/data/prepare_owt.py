r"""Tokenise OpenWebText (or any document corpus) with GPT-2 BPE into packed 1024-token ArrayRecord blocks.

  python -m md4_jax.data.prepare_owt --output_dir ~/data/owt                          # hub: Skylion007/openwebtext
  python -m md4_jax.data.prepare_owt --input 'owt/*.jsonl.gz' --output_dir ~/data/owt --holdout last_documents

Each document gets its GPT-2 ids followed by EOS (50256); documents are concatenated and cut into seq_len blocks, a
block may span documents, and the final incomplete block of each split is dropped. Empty (whitespace-only) documents
are skipped. Held-out split ('validation'), selectable:
  fraction (MD4): documents are taken in chunks of --docs_per_chunk (10k, as MD4); of the blocks completed while
      packing a chunk, round(eval_fraction * k) (2%), picked by np.random.default_rng([seed, chunk]), go to
      validation.
  last_documents (MDLM / ReMDM): the last --eval_documents (100k) documents form validation, packed on their own;
      they are held back in a FIFO (about 2 bytes per token) until the corpus ends, so the total need not be known.
Tokenisation runs on --num_threads threads (tiktoken releases the GIL) one chunk at a time, so memory stays bounded
(plus the FIFO). Progress goes to stderr. Training reads the result with make_dataset(name='owt', path=output_dir).
"""
from __future__ import annotations

import argparse
import collections
import itertools
import os
import sys
import time
from typing import Any, Callable, Iterable

import numpy as np

from md4_jax.data import documents as documents_lib
from md4_jax.data import gpt2_tokenizer
from md4_jax.data import token_records

HOLDOUTS = ('fraction', 'last_documents')
HUB_NAME = 'Skylion007/openwebtext'


class _Progress:
  """Prints documents, tokens and rates to stderr at most every `every_s` seconds."""

  def __init__(self, every_s: float, log: Callable[[str], None]):
    self._every_s, self._log = every_s, log
    self._start = self._last = time.monotonic()
    self.documents = self.tokens = 0

  def update(self, documents: int, tokens: int, force: bool = False) -> None:
    self.documents += documents
    self.tokens += tokens
    now = time.monotonic()
    if force or now - self._last >= self._every_s:
      self._last = now
      elapsed = max(now - self._start, 1e-9)
      self._log(f'[prepare_owt] {self.documents:,} documents, {self.tokens:,} tokens, '
                f'{self.documents / elapsed:,.0f} docs/s, {self.tokens / elapsed:,.0f} tokens/s')


def prepare(documents: Iterable[str], output_dir: str, *, seq_len: int = 1024, holdout: str = 'fraction',
            eval_fraction: float = 0.02, eval_documents: int = 100_000, docs_per_chunk: int = 10_000,
            seed: int = 0, num_threads: int | None = None, records_per_shard: int = 65_536,
            log_every_s: float = 30.0, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
            source: str = '') -> dict[str, Any]:
  """Tokenises, packs and writes `documents`; returns the metadata written to output_dir/metadata.json."""
  if holdout not in HOLDOUTS:
    raise ValueError(f'unknown holdout {holdout!r}; valid: {", ".join(HOLDOUTS)}')
  if not 0 < eval_fraction < 1 or eval_documents < 1 or docs_per_chunk < 1 or seq_len < 1:
    raise ValueError(f'eval_fraction={eval_fraction} (need (0, 1)), eval_documents={eval_documents}, '
                     f'docs_per_chunk={docs_per_chunk}, seq_len={seq_len} (need >= 1)')
  os.makedirs(output_dir, exist_ok=True)
  if os.path.exists(os.path.join(output_dir, token_records.METADATA)):
    raise ValueError(f'{output_dir!r} already holds a prepared dataset; choose an empty --output_dir')
  num_threads = num_threads or os.cpu_count() or 1
  packers = {split: token_records.BlockPacker(seq_len) for split in ('train', 'validation')}
  writers = {split: token_records.ShardWriter(output_dir, split, records_per_shard) for split in packers}
  held_back: collections.deque[np.ndarray] = collections.deque()
  progress = _Progress(log_every_s, log)
  texts = (text for text in documents if text.strip())
  for chunk_index in itertools.count():
    chunk = list(itertools.islice(texts, docs_per_chunk))
    if not chunk:
      break
    encoded = gpt2_tokenizer.encode_documents(chunk, num_threads)
    progress.update(len(chunk), sum(e.size for e in encoded))
    if holdout == 'last_documents':
      held_back.extend(encoded)
      released = [held_back.popleft() for _ in range(max(0, len(held_back) - eval_documents))]
      if released:
        writers['train'].write(packers['train'].add(np.concatenate(released)))
    else:
      blocks = packers['train'].add(np.concatenate(encoded))
      is_eval = np.zeros(len(blocks), bool)
      is_eval[np.random.default_rng([seed, chunk_index]).permutation(len(blocks))[
          :round(eval_fraction * len(blocks))]] = True
      writers['train'].write(blocks[~is_eval])
      writers['validation'].write(blocks[is_eval])
  if held_back:
    writers['validation'].write(packers['validation'].add(np.concatenate(list(held_back))))
  progress.update(0, 0, force=True)
  splits = {split: writer.close() for split, writer in writers.items()}
  for split, entry in splits.items():
    if entry['num_records'] == 0:
      raise ValueError(f'the corpus gave no complete {seq_len}-token block for split {split!r} '
                       f'({progress.documents} documents, {progress.tokens} tokens); it is empty or too small')
  return token_records.write_metadata(
      output_dir, seq_len=seq_len, vocab_size=gpt2_tokenizer.VOCAB_SIZE, splits=splits, tokenizer='gpt2',
      eos_id=gpt2_tokenizer.EOS_ID, holdout=holdout, eval_fraction=eval_fraction, eval_documents=eval_documents,
      docs_per_chunk=docs_per_chunk, seed=seed, num_documents=progress.documents, num_tokens=progress.tokens,
      dropped_tail_tokens={split: packer.pending for split, packer in packers.items()}, source=source)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--output_dir', required=True)
  parser.add_argument('--input', nargs='*', default=None,
                      help=f'local files, directories or globs ({", ".join(documents_lib.SUFFIXES)}); '
                           f'omitted: stream --hub_name from the Hugging Face hub')
  parser.add_argument('--hub_name', default=HUB_NAME)
  parser.add_argument('--text_field', default='text')
  parser.add_argument('--seq_len', type=int, default=1024)
  parser.add_argument('--holdout', choices=HOLDOUTS, default='fraction')
  parser.add_argument('--eval_fraction', type=float, default=0.02)
  parser.add_argument('--eval_documents', type=int, default=100_000)
  parser.add_argument('--docs_per_chunk', type=int, default=10_000)
  parser.add_argument('--max_documents', type=int, default=None, help='stop after this many (quick runs)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num_threads', type=int, default=None)
  parser.add_argument('--records_per_shard', type=int, default=65_536)
  args = parser.parse_args(argv)
  how = 'pass existing files or directories with --input'
  if args.input:
    files = documents_lib.expand_paths(args.input, how)
    texts = documents_lib.iter_local_documents(files, args.text_field)
    source = ' '.join(args.input)
  else:
    texts = documents_lib.iter_hub_documents(args.hub_name, 'train', args.text_field)
    source = f'hub:{args.hub_name}'
  if args.max_documents is not None:
    texts = itertools.islice(texts, args.max_documents)
  metadata = prepare(texts, os.path.expanduser(args.output_dir), seq_len=args.seq_len, holdout=args.holdout,
                     eval_fraction=args.eval_fraction, eval_documents=args.eval_documents,
                     docs_per_chunk=args.docs_per_chunk, seed=args.seed, num_threads=args.num_threads,
                     records_per_shard=args.records_per_shard, source=source)
  print({split: entry['num_records'] for split, entry in metadata['splits'].items()})


if __name__ == '__main__':
  main()
