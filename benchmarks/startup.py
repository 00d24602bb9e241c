"""Start-up benchmark: seconds from launching `python -m md4_jax.train` to its first finished step.

    python benchmarks/startup.py [--config experiments/kjv_tiny.py] [--repeats 3] [--config.key=value ...]

Each repeat launches the CLI twice on fresh workdirs with one new, empty compilation cache directory: the first
run compiles everything (cold), the second finds the compiled programs in the persistent cache (warm, what a
resumed or repeated run of the same shapes sees). The clock starts before the interpreter does (imports
included) and stops when the run prints "first step done". Medians over the repeats are printed as markdown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def time_to_first_step(config: str, workdir: str, cache_dir: str, overrides: list[str]) -> float:
  """Seconds from launch to the 'first step done' line of one single-step training run (then it is stopped)."""
  command = [sys.executable, "-m", "md4_jax.train", f"--config={config}", f"--workdir={workdir}",
             f"--compilation_cache_dir={cache_dir}", "--config.train.num_steps=1", "--config.train.eval_every=0",
             "--config.train.sample_every=0", *overrides]
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  start = time.perf_counter()
  with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                        cwd=ROOT) as process:
    output = []
    for line in process.stdout:
      output.append(line)
      if line.startswith("first step done"):
        elapsed = time.perf_counter() - start
        process.wait()
        return elapsed
    process.wait()
  raise RuntimeError(f"the run never finished a step (exit {process.returncode}):\n{''.join(output)[-2000:]}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=os.path.join(ROOT, "experiments", "kjv_tiny.py"))
  parser.add_argument("--repeats", type=int, default=3)
  args, overrides = parser.parse_known_args()  # --config.key=value overrides go to the runs
  cold, warm = [], []
  for _ in range(args.repeats):
    with tempfile.TemporaryDirectory(prefix="md4_startup_") as tmp:
      cache = os.path.join(tmp, "cache")
      cold.append(time_to_first_step(os.path.abspath(args.config), os.path.join(tmp, "a"), cache, overrides))
      warm.append(time_to_first_step(os.path.abspath(args.config), os.path.join(tmp, "b"), cache, overrides))
      print(f"cold {cold[-1]:.2f} s, warm {warm[-1]:.2f} s", file=sys.stderr, flush=True)
  print("\n| start-up to the first step (s, imports included) | median | runs |\n|---|---|---|")
  print(f"| cold (empty compilation cache) | {statistics.median(cold):.2f} | {', '.join(f'{x:.2f}' for x in cold)} |")
  print(f"| warm (persistent cache from the run before) | {statistics.median(warm):.2f} | "
        f"{', '.join(f'{x:.2f}' for x in warm)} |")


if __name__ == "__main__":
  main()
