"""The two CPU-sized claims on the KJV corpus, from runs made with the commands in BENCHMARKS.md.

    python benchmarks/kjv_claims.py --md4 /tmp/kjv_bench --genmd4 /tmp/kjv_genmd4 --scaling /tmp/kjv_scaling /tmp/kjv_loop

1. GenMD4 reaches lower validation bits per character than MD4 at equal steps: reads both runs' metrics.jsonl.
2. ReMDM's sample quality rises with T while ancestral sampling stays flat: reads the samples that scaling_report
   wrote (samples/<method>_T<T>.txt and .jsonl) and reports their token entropy and a scorer-free quality measure for character models, the share of sampled words that are
   words of the KJV training split (a Gen-PPL-like measure that needs no autoregressive model).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from md4_jax.training import config_base  # noqa: E402
from md4_jax.evaluation import quality
from md4_jax.data import text_corpus  # noqa: E402


def eval_curve(workdir: str) -> dict[int, float]:
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["eval/bits_per_token"] for r in rows if "eval/bits_per_token" in r}


def kjv_vocabulary(config_path: str) -> set[str]:
  config = config_base.load_experiment(config_path)
  ids = text_corpus.load_corpus(config.data.path, "see ../shared/data/README.md")
  train = text_corpus.decode_chars(ids[: int(len(ids) * config.data.train_fraction)])
  return set(train.split())


def word_validity(path: str, vocabulary: set[str]) -> float:
  words = [w for line in open(path, encoding="utf-8") for w in line.split()]
  return sum(w in vocabulary for w in words) / max(len(words), 1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "experiments", "kjv_tiny.py"))
  parser.add_argument("--md4", required=True)
  parser.add_argument("--genmd4", required=True)
  parser.add_argument("--scaling", nargs="+", required=True, help="scaling_report output directories")
  args = parser.parse_args()

  md4, gen = eval_curve(args.md4), eval_curve(args.genmd4)
  print("| step | MD4 validation bits/char | GenMD4 validation bits/char |\n|---|---|---|")
  for step in sorted(set(md4) & set(gen)):
    print(f"| {step} | {md4[step]:.4f} | {gen[step]:.4f} |")

  vocabulary = kjv_vocabulary(os.path.abspath(args.config))
  print("\n| method | T | KJV-word share | entropy (nats) |\n|---|---|---|---|")
  runs = []
  for directory in args.scaling:
    for path in glob.glob(os.path.join(directory, "samples", "*_T*.txt")):
      method, steps = os.path.basename(path)[:-4].rsplit("_T", 1)
      runs.append((method, int(steps), path))
  for method, steps, path in sorted(runs):
    ids = np.array([json.loads(line)["tokens"] for line in open(path[:-4] + ".jsonl")])
    print(f"| {method} | {steps} | {word_validity(path, vocabulary):.3f} | {float(quality.entropy(ids).mean()):.3f} |")

if __name__ == "__main__":
  main()
