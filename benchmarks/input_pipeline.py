r"""Input-pipeline throughput: examples/s and tokens/s that make_dataset delivers on one process.

  python benchmarks/input_pipeline.py                       # print the table
  python benchmarks/input_pipeline.py --update BENCHMARKS.md  # also rewrite its '## Input pipeline' section

Cases: 'chars' on kjv.txt.gz (../shared/data, else the built-in corpus) at the kjv_tiny and MD4-text8 shapes; a
synthetic text8-sized corpus (100M characters: per-epoch permutation of 90M windows); 'owt' on a synthetic
ArrayRecord set this script writes (owt_small shapes: 512 x 1024 tokens per step); 'digits'. Each case times
`--seconds` of batches after a warm-up batch, whose latency (corpus load, normalisation, first permutation) is
reported apart.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import md4_jax.data as data  # noqa: E402  pylint: disable=g-import-not-at-top
from md4_jax.data import token_records  # noqa: E402  pylint: disable=g-import-not-at-top

KJV = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'kjv.txt.gz'
SECTION = '## Input pipeline'


def measure(config, split: str, batch_size: int, seconds: float) -> dict[str, float]:
  """Warm-up latency (make_dataset + first batch) and steady-state batches/s of `split` (eval splits re-read)."""
  start = time.perf_counter()
  dataset = data.make_dataset(config, split, batch_size=batch_size, seed=0)
  initial_state = dataset.get_state()
  batch = next(dataset)
  first = time.perf_counter() - start
  tokens_per_example = int(np.prod(batch['x'].shape[1:]))
  num_batches, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    try:
      next(dataset)
    except StopIteration:  # an eval split ended: read it again
      dataset.set_state(initial_state)
      continue
    num_batches += 1
  elapsed = time.perf_counter() - start
  examples_per_s = num_batches * batch_size / elapsed
  return {'first_s': first, 'batches_per_s': num_batches / elapsed, 'examples_per_s': examples_per_s,
          'tokens_per_s': examples_per_s * tokens_per_example}


def write_synthetic_owt(directory: str, num_records: int, seq_len: int) -> None:
  """Random GPT-2 ids in the prepare_owt format (train: num_records blocks, validation: a tenth)."""
  rng = np.random.default_rng(0)
  splits = {}
  for split, n in (('train', num_records), ('validation', num_records // 10)):
    writer = token_records.ShardWriter(directory, split, records_per_shard=8192)
    for start in range(0, n, 4096):
      writer.write(rng.integers(0, 50257, (min(4096, n - start), seq_len), dtype=np.uint16))
    splits[split] = writer.close()
  token_records.write_metadata(directory, seq_len=seq_len, vocab_size=50257, splits=splits, source='synthetic')


def write_synthetic_text8(path: str, num_chars: int) -> None:
  """text8-like: random words of a-z separated by single spaces."""
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 27, num_chars, dtype=np.uint8)
  ids[1:][ids[1:] == ids[:-1]] = 0  # no two spaces in a row
  pathlib.Path(path).write_bytes(np.frombuffer(b'abcdefghijklmnopqrstuvwxyz ', np.uint8)[ids].tobytes())


def cases(tmp: str, args) -> list[tuple[str, object, str, int]]:
  chars = data.default_data_config('chars')
  chars.path = str(KJV) if KJV.exists() else None
  corpus = 'kjv' if KJV.exists() else 'built-in pydoc corpus'
  owt = data.default_data_config('owt')
  owt.path = os.path.join(tmp, 'owt')
  write_synthetic_owt(owt.path, args.owt_records, 1024)
  found = [
      (f'chars ({corpus}), L=256', chars, 'train', 64),
      (f'chars ({corpus}), L=256', chars, 'train', 512),
      (f'chars ({corpus}), L=256', chars, 'validation', 512),
      (f'owt (synthetic, {args.owt_records:,} blocks), L=1024', owt, 'train', 512),
      (f'owt (synthetic, {args.owt_records // 10:,} blocks), L=1024', owt, 'validation', 512),
      ('digits 8x8x1', data.default_data_config('digits'), 'train', 256),
  ]
  if args.text8_chars:
    text8 = data.default_data_config('text8')
    text8.path = os.path.join(tmp, 'text8')
    write_synthetic_text8(text8.path, args.text8_chars)
    found.insert(3, (f'text8 (synthetic, {args.text8_chars:,} chars), L=256', text8, 'train', 512))
  return found


def table(rows: list[tuple[str, str, int, dict[str, float]]]) -> str:
  lines = ['| dataset | split | batch | first batch (s) | batches/s | examples/s | tokens/s |',
           '|---|---|---|---|---|---|---|']
  for name, split, batch_size, r in rows:
    lines.append(f'| {name} | {split} | {batch_size} | {r["first_s"]:.2f} | {r["batches_per_s"]:,.1f} | '
                 f'{r["examples_per_s"]:,.0f} | {r["tokens_per_s"]:,.0f} |')
  return '\n'.join(lines)


def update_section(path: str, body: str) -> None:
  """Replaces (or appends) the '## Input pipeline' section of `path`, leaving every other section alone."""
  text = pathlib.Path(path).read_text() if os.path.exists(path) else '# Benchmarks\n'
  lines = text.splitlines()
  if SECTION in lines:
    start = lines.index(SECTION)
    stop = next((i for i in range(start + 1, len(lines)) if lines[i].startswith('## ')), len(lines))
    lines = lines[:start] + body.rstrip('\n').splitlines() + ([''] if stop < len(lines) else []) + lines[stop:]
  else:
    lines = lines + [''] + body.rstrip('\n').splitlines()
  pathlib.Path(path).write_text('\n'.join(lines) + '\n')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--seconds', type=float, default=3.0, help='timed seconds per case')
  parser.add_argument('--owt_records', type=int, default=20_000, help='synthetic OWT train blocks (2 KiB each)')
  parser.add_argument('--text8_chars', type=int, default=100_000_000, help='0 = skip the text8-sized case')
  parser.add_argument('--update', default=None, help='markdown file whose input-pipeline section to rewrite')
  args = parser.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, config, split, batch_size in cases(tmp, args):
      rows.append((name, split, batch_size, measure(config, split, batch_size, args.seconds)))
      print(table(rows[-1:]).splitlines()[-1], flush=True)
  result = table(rows)
  print(result)
  if args.update:
    command = 'python benchmarks/input_pipeline.py ' + ' '.join(sys.argv[1:])
    body = (f'{SECTION}\n\nCommand: `{command}` ({datetime.date.today()}, {platform.processor() or platform.machine()},'
            f' {os.cpu_count()} CPU cores, no GPU, Python {platform.python_version()}, numpy {np.__version__}). '
            'One process, the main thread only, no prefetching; numbers vary with the load of the shared '
            'machine. batches/s is the fastest training-step rate the pipeline can feed at that per-process batch: '
            'it is the bottleneck only for a step faster than that. First batch = make_dataset + one batch: '
            'reading and normalising the corpus (cached per process, hence ~0 for later cases on the same file), '
            'the first epoch permutation (~5 s for text8\'s 90M windows, again at each epoch end, every 175k steps '
            'at batch 512), opening the shards, importing scikit-learn.'
            f'\n\n{result}\n')
    update_section(args.update, body)


if __name__ == '__main__':
  main()
