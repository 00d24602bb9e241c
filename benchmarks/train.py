"""Training benchmark: kjv_tiny end to end (or any experiment): speed, start-up, compilations, bits per char.

    python benchmarks/train.py                          # kjv_tiny on ../shared/data/kjv.txt.gz
    python benchmarks/train.py --data_path /data/kjv.txt.gz

(MD4-S at L=1024 and its model FLOPs utilisation on a GPU: benchmarks/mfu.py.)

Reports: time from start to the first step (compilation included), compilations of the train step, median
step time and tokens/s, peak memory, validation bits per character at the evaluation steps, and the final
EMA model re-evaluated under several evaluation seeds. Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time

_START = time.time()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from md4_jax.training import config_base  # noqa: E402
from md4_jax.evaluation import nelbo as evaluation
from md4_jax import train


class _CompileCounter(logging.Handler):
  """Counts XLA compilations of a jitted function by name (jax_log_compiles)."""

  def __init__(self, name: str):
    super().__init__()
    self.name, self.count = name, 0

  def emit(self, record):
    message = record.getMessage()
    if "Compiling" in message and self.name in message:
      self.count += 1


def _peak_memory_mb() -> float:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # host RSS (CPU backend)


def run_experiment(config_path: str, workdir: str, eval_seeds: int, data_path: str | None = None) -> dict:
  config = config_base.load_experiment(config_path)
  if data_path:
    config.data.path = data_path
  counter = _CompileCounter("train_step")
  logging.getLogger("jax").addHandler(counter)
  jax.config.update("jax_log_compiles", True)
  log_path = os.path.join(workdir, "metrics.jsonl")
  train_start = time.time()
  last = train.train_and_evaluate(config, workdir)
  jax.config.update("jax_log_compiles", False)
  records = [json.loads(line) for line in open(log_path)]
  first = [r for r in records if "train/steps_per_second" in r]
  rates = [r["train/steps_per_second"] for r in first]
  step_time = 1.0 / float(np.median(rates))
  tokens = config.train.batch_size * config.data.seq_len
  evals = {r["step"]: r["eval/bits_per_token"] for r in records if "eval/bits_per_token" in r}
  seeds = _reevaluate(config, workdir, eval_seeds)
  return {"config": config_path, "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
          "train_step_compilations": counter.count, "median_step_s": step_time,
          "tokens_per_s": tokens / step_time, "peak_memory_mb": _peak_memory_mb(), "eval_bpc": evals,
          "final_bpc_by_eval_seed": seeds,
          "first_step_s": train_start - _START + last["time/first_step_s"]}


def _reevaluate(config, workdir: str, seeds: int) -> list[float]:
  """The final EMA model on the validation split under `seeds` different evaluation seeds (t and masks)."""
  out = []
  for seed in range(1, seeds + 1):
    config_seed = config.copy_and_resolve_references()
    config_seed.seed = config.seed + 100 * seed
    out.append(evaluation.evaluate_checkpoint(config_seed, workdir)["eval/bits_per_token"])
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "experiments",
                                                        "kjv_tiny.py"))
  parser.add_argument("--workdir", default=None, help="default: a fresh temporary directory")
  parser.add_argument("--eval_seeds", type=int, default=3)
  parser.add_argument("--data_path", default=None, help="the config's data.path instead (e.g. another copy of "
                      "kjv.txt.gz)")
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="md4_bench_")
  result = run_experiment(os.path.abspath(args.config), workdir, args.eval_seeds, args.data_path)
  print(json.dumps(result, indent=1))
  print("\n| metric | value |\n|---|---|")
  print(f"| device | {result['device']} x {result['num_devices']} |")
  print(f"| start-up to first step (s, incl. imports + compile) | {result['first_step_s']:.1f} |")
  print(f"| train-step compilations | {result['train_step_compilations']} |")
  print(f"| median step time (ms) | {1000 * result['median_step_s']:.1f} |")
  print(f"| tokens/s | {result['tokens_per_s']:.0f} |")
  print(f"| peak memory (MiB) | {result['peak_memory_mb']:.0f} |")
  for step, bpc in sorted(result["eval_bpc"].items()):
    print(f"| validation bits/char at step {step} | {bpc:.4f} |")
  seeds = result["final_bpc_by_eval_seed"]
  print(f"| final bits/char over {len(seeds)} eval seeds | {np.mean(seeds):.4f} ± {np.std(seeds):.4f} |")


if __name__ == "__main__":
  main()
