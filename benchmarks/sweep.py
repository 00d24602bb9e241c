"""A sweep of N members against the same N runs launched one by one: total wall time and each member's start-up.

    python benchmarks/sweep.py --workdir /tmp/sweep_bench [--config experiments/demo.py --num_steps 100]

Both sides start from an empty compilation cache of their own (as a first sweep on a machine would), and each
side's runs share it (the separate runs through md4_jax.train's --compilation_cache_dir, as the default cache
would). Prints a markdown table: per member the wall time of its process and its 'first step done' time
(imports, data, model and compilation, or loading the compiled step from the cache).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from md4_jax.sweeps import sweep_spec  # pylint: disable=g-import-not-at-top,wrong-import-position

FIRST_STEP = re.compile(r"first step done ([0-9.]+)s after start")


def _first_step_s(log: str) -> float | None:
  found = FIRST_STEP.findall(log)
  return float(found[-1]) if found else None


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--config", default="experiments/demo.py")
  parser.add_argument("--num_steps", type=int, default=100)
  args = parser.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  n = args.num_steps
  common = [f"--config.train.num_steps={n}", f"--config.train.eval_every={n}", f"--config.train.sample_every={n}",
            f"--config.train.checkpoint_every={n}"]
  members = sweep_spec.load_sweep(args.config)
  env = dict(os.environ, PYTHONPATH=ROOT)
  rows = []
  start = time.time()
  for m in members:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "md4_jax.train", "--config", args.config, "--workdir",
                          os.path.join(args.workdir, "separate", m.name), *m.flag_args(common),
                          f"--compilation_cache_dir={os.path.join(args.workdir, 'cache_separate')}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    rows.append({"name": m.name, "separate_s": time.time() - t0, "separate_first": _first_step_s(out)})
  separate_total = time.time() - start
  print(f"separate runs: {separate_total:.1f}s, load average {os.getloadavg()[0]:.1f}", flush=True)
  start = time.time()
  root = os.path.join(args.workdir, "sweep")
  subprocess.run([sys.executable, "-m", "md4_jax.sweep", "--config", args.config, "--workdir", root, *common,
                  f"--compilation_cache_dir={os.path.join(args.workdir, 'cache_sweep')}"],
                 cwd=ROOT, env=env, check=True)
  sweep_total = time.time() - start
  from md4_jax.sweeps import sweep_report  # pylint: disable=g-import-not-at-top
  for row, m in zip(rows, members):
    with open(sweep_report.status_path(root, m.name, "log"), encoding="utf-8") as f:
      row["sweep_first"] = _first_step_s(f.read())
    row["sweep_s"] = sweep_report.read_status(root, m.name)["wall_s"]
  print(f"\n{len(members)} members of {args.config}, {n} steps each; load average {os.getloadavg()[0]:.1f}\n")
  print("| member | separate run: wall s | first step s | sweep member: wall s | first step s |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['name']} | {r['separate_s']:.1f} | {r['separate_first']} | {r['sweep_s']:.1f} | {r['sweep_first']} |")
  print(f"| total (incl. the sweep's validation and report) | {separate_total:.1f} | | {sweep_total:.1f} | |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
