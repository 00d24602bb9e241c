"""Rematerialisation (`model.network.remat`): XLA memory of the compiled train step and step time, off vs on.

    python benchmarks/remat.py                                   # kjv_tiny, timed steps
    python benchmarks/remat.py --config.model.size=small --config.data.seq_len=1024 \
        --config.train.batch_size=8 --steps 0                    # MD4-S body at L=1024, compile only

For each setting the train step of the experiment (default experiments/kjv_tiny.py, on the built-in corpus so no
file is needed) is compiled from abstract shapes; XLA's buffer assignment gives its temporary bytes (activations
kept for the backward pass live there) and the whole (arguments + outputs + temporaries - aliased). With --steps N
the step then runs N + 1 times on real data and the median of the last N is reported.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from md4_jax import config_base, train  # noqa: E402
from md4_jax import data as data_lib  # noqa: E402
from md4_jax import experiment as experiment_lib  # noqa: E402


def measure(config, steps: int) -> dict:
  exp = experiment_lib.build(config)
  step_fn = train.jit_train_step(exp)
  with jax.set_mesh(exp.mesh):
    start = time.perf_counter()
    compiled = step_fn.lower(exp.abstract_state, exp.abstract_batch(config.train.batch_size)).compile()
    compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  out = {"compile_s": compile_s, "temp_bytes": analysis.temp_size_in_bytes,
         "total_bytes": (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                         + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)}
  if steps:
    data = data_lib.make_dataset(config.data, "train", batch_size=config.train.batch_size, seed=0)
    state, times = exp.init_state(), []
    for _ in range(steps + 1):
      batch = exp.global_batch(next(data))
      start = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    out["step_s"] = float(np.median(times[1:]))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "experiments",
                                                        "kjv_tiny.py"))
  parser.add_argument("--steps", type=int, default=20, help="timed steps per setting (0: compile only)")
  args, overrides = parser.parse_known_args()
  base = config_base.load_experiment(args.config)
  base.data.path = None  # the built-in corpus: same shapes, no file needed
  base.mesh.data, base.mesh.fsdp = 1, 1
  for item in overrides:  # --config.group.key=value
    key, _, value = item.removeprefix("--config.").partition("=")
    *parents, leaf = key.split(".")
    node = base
    for name in parents:
      node = node[name]
    try:
      node[leaf] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      node[leaf] = value  # a string
  rows = []
  for remat in (False, True):
    config = base.copy_and_resolve_references()
    config.model.network.remat = remat
    rows.append((remat, measure(config, args.steps)))
    print(f"remat={remat}: {rows[-1][1]}", file=sys.stderr, flush=True)
  print("\n| remat | XLA temporaries (MiB) | XLA total (MiB) | compile (s) | step (ms) |\n|---|---|---|---|---|")
  for remat, r in rows:
    step = f"{1e3 * r['step_s']:.1f}" if "step_s" in r else "-"
    print(f"| {remat} | {r['temp_bytes'] / 2**20:.1f} | {r['total_bytes'] / 2**20:.1f} | {r['compile_s']:.1f} | "
          f"{step} |")


if __name__ == "__main__":
  main()
