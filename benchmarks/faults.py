"""Fault table: real training runs (the demo experiment shrunk to seconds) hit by the faults a cluster job meets.

    python benchmarks/faults.py [--kills 12] [--out faults.md] [--parts kills,damaged,lock,saves,inputs]

Each fault is tried `count` times with the `md4_jax.train` command line; a row says what happened:
- kill -9 during a save (sync and async saves, `--kills` each): killed while a checkpoint folder is being written
  (an `*.orbax-checkpoint-tmp` folder present), then resumed; a chain of kills and resumes ends in a run that is
  compared bit for bit with an uninterrupted one, and its metrics.jsonl must hold one train row per step;
- SIGTERM (within the async chain): exit 0 with a checkpoint, then resumed;
- a damaged newest checkpoint, each kind (file truncated, zeroed, deleted): named, set aside, the run resumes from
  the step before and ends bitwise equal; the binaries' restore (`restore_ema`, no --step) uses the step before;
- a second run on a live workdir, and two runs started together: one refusal naming the holder; after kill -9 of
  the holder the next run starts;
- a failed save (checkpoint folder made immutable with chattr if run as root, else a file-size limit) and a full
  disk (a 1 MiB tmpfs as root, else a file-size limit): exit code, seconds from the save to the exit, lines printed;
- bad inputs the loop meets after step 1 (eval split too small, bad sampler configs, ...) and a changed optimizer
  layout: exit code, seconds, the message.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)
TINY = ["--config=experiments/demo.py", "--config.data.seq_len=32", "--config.model.network.num_layers=1",
        "--config.model.network.num_heads=2", "--config.model.network.width=32", "--config.optim.warmup_steps=2",
        "--config.train.batch_size=16", "--config.train.eval_batch_size=16", "--config.train.eval_batches=2",
        "--config.train.num_samples=2", "--config.sampler.num_steps=8", "--config.train.log_every=1",
        "--config.train.eval_every=0", "--config.train.sample_every=0", "--config.train.keep=100"]
STEPS = 200
ROWS = []


def command(workdir, *extra, cache):
  return [sys.executable, "-m", "md4_jax.train", *TINY, f"--workdir={workdir}", f"--compilation_cache_dir={cache}",
          f"--config.train.num_steps={STEPS}", "--config.train.checkpoint_every=5", *extra]


def start(cmd, **kwargs):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          **kwargs)


def finish(proc, timeout=300):
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    return "hung", out
  return proc.returncode, out


def run(cmd, timeout=300, **kwargs):
  began = time.time()
  code, out = finish(start(cmd, **kwargs), timeout)
  return code, out, time.time() - began


def final_state(workdir):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  state = manager.restore(STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  manager.close()
  return state


def bitwise_equal(a_dir, b_dir) -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  a, b = jax.tree.leaves(final_state(a_dir)), jax.tree.leaves(final_state(b_dir))
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def one_row_per_step(workdir) -> bool:
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl")) if "train/objective" in l]
  return steps == list(range(1, STEPS + 1))


def row(fault, count, outcome):
  ROWS.append((fault, count, outcome))
  print(f"| {fault} | {count} | {outcome} |", flush=True)


def kill_chain(root, reference, cache, asynchronous, kills, sigterms):
  """Kill -9 during saves `kills` times (and SIGTERM `sigterms` times), resuming each time; then finish."""
  workdir = os.path.join(root, f"chain_{asynchronous}")
  cmd = command(workdir, f"--config.train.async_checkpoint={asynchronous}", cache=cache)
  during, failed, term_ok = 0, 0, 0
  for attempt in range(kills + sigterms):
    proc = start(cmd)
    folder = os.path.join(workdir, "checkpoints")
    if attempt >= kills:  # SIGTERM after a few steps
      for line in proc.stdout:
        if line.startswith("step ") and "/" in line:
          proc.send_signal(signal.SIGTERM)
          break
      code, out = finish(proc)
      term_ok += code == 0 and "SIGTERM: saved checkpoint" in out
      failed += "Traceback" in out or "error:" in out
      continue
    existing = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    killed_during = False
    while proc.poll() is None:
      names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
      if any("orbax-checkpoint-tmp" in n for n in names - existing):
        time.sleep(random.uniform(0, 0.02))
        names = set(os.listdir(folder))
        killed_during = any("orbax-checkpoint-tmp" in n for n in names)
        proc.kill()
        break
      time.sleep(0.001)
    _, out = finish(proc)
    during += killed_during
    failed += "Traceback" in out or "error:" in out  # the resume (or start) this attempt made failed
  code, out, _ = run(cmd)
  equal = code == 0 and bitwise_equal(workdir, reference)
  mode = "async" if asynchronous else "sync"
  row(f"kill -9 during a save ({mode} saves)", kills,
      f"{during} killed with a checkpoint folder being written, the others just after; {failed} failed resumes; "
      f"final run exit {code}, bitwise equal to the uninterrupted run: {equal}; one metrics row per step: "
      f"{one_row_per_step(workdir)}")
  if sigterms:
    row("SIGTERM (then resume)", sigterms, f"{term_ok}/{sigterms} exited 0 with 'SIGTERM: saved checkpoint'; "
        f"resumed in the chain above")


def damaged(root, reference, cache):
  from md4_jax.training import checkpoint, config_base, experiment  # pylint: disable=g-import-not-at-top
  kinds = [("state/manifest.ocdbt", "truncate"), ("state/manifest.ocdbt", "delete"), ("state/_METADATA", "zero"),
           ("state/_METADATA", "truncate"), ("meta/metadata", "delete"), ("data/metadata", "truncate"),
           ("array data file", "zero"), ("array data file", "delete")]
  for name, how in kinds:
    workdir = os.path.join(root, f"damaged_{name.replace('/', '_')}_{how}".replace(" ", "_"))
    shutil.copytree(reference, workdir)
    folder = os.path.join(workdir, "checkpoints", str(STEPS))
    if name == "array data file":
      files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(folder, "state")) for f in fs
               if f"{os.sep}d{os.sep}" in os.path.join(d, f)]
      path = max(files, key=os.path.getsize)
    else:
      path = os.path.join(folder, name)
    size = os.path.getsize(path)
    if how == "delete":
      os.remove(path)
    else:
      with open(path, "r+b") as f:
        f.truncate(size // 2) if how == "truncate" else f.write(b"\0" * size)
    config = config_base.load_experiment(os.path.join(ROOT, "experiments", "demo.py"))
    for flag in TINY[1:]:
      key, value = flag[len("--config."):].split("=")
      group, *rest = key.split(".")
      target = config[group]
      for part in rest[:-1]:
        target = target[part]
      target[rest[-1]] = type(target[rest[-1]])(value) if not isinstance(target[rest[-1]], bool) else value == "True"
    config.train.num_steps = STEPS
    config.mesh.data = 1
    binaries_step = experiment.restore_ema(config, workdir).step
    code, out, seconds = run(command(workdir, cache=cache))
    said = next((l for l in out.splitlines() if "is damaged" in l), "(not named)")
    equal = code == 0 and bitwise_equal(workdir, reference)
    aside = os.listdir(os.path.join(workdir, checkpoint.DAMAGED_DIR))
    row(f"damaged newest checkpoint: {name} {how}", 1,
        f"exit {code}; said `{said.split(' is damaged: ')[-1].split(';')[0][:90]}`; set aside: {aside}; "
        f"resumed from {STEPS - 5}, bitwise equal: {equal}; binaries (no --step) used step {binaries_step}")


def second_run(root, cache):
  workdir = os.path.join(root, "live")
  first = start(command(workdir, "--config.train.num_steps=100000", cache=cache))
  for line in first.stdout:
    if line.startswith("step 2/"):
      break
  threading.Thread(target=first.stdout.read, daemon=True).start()  # keep its pipe drained: it keeps training
  refusals, seconds = [], []
  for seed in range(3):
    code, out, took = run(command(workdir, f"--config.seed={seed + 1}", cache=cache))
    refusals.append(code == 1 and f"pid {first.pid}" in out and len(out.strip().splitlines()) == 1)
    seconds.append(took)
  first.kill()  # kill -9: its lock stays behind
  finish(first)
  code, out, _ = run(command(workdir, "--config.train.num_steps=3", cache=cache))
  row("second run on a live workdir (other seeds)", 3,
      f"{sum(refusals)}/3 refused with one line naming the holder's host, pid and start time, in "
      f"{max(seconds):.1f} s at most (interpreter start included); the holder kept training")
  row("next run after kill -9 of the lock holder", 1,
      f"exit {code}; {'lock of a run that is gone' in out and 'moved aside' in out and 'said so' or 'silent'}")
  together = 0
  for attempt in range(3):
    workdir = os.path.join(root, f"together_{attempt}")
    procs = [start(command(workdir, "--config.train.num_steps=3", cache=cache)) for _ in range(2)]
    codes = sorted(finish(p)[0] for p in procs)
    together += codes == [0, 1]
  row("two runs started together on one workdir", 3, f"{together}/3: one finished (exit 0), one refused (exit 1)")


def failed_saves(root, cache):
  root_user = os.geteuid() == 0
  methods = (["immutable"] if root_user else []) + ["size limit", "size limit"]
  for asynchronous in (True, False):
    for method in sorted(set(methods)):
      results = []
      for attempt in range(methods.count(method)):
        workdir = os.path.join(root, f"failed_{asynchronous}_{method.replace(' ', '_')}_{attempt}")
        proc = start(command(workdir, f"--config.train.async_checkpoint={asynchronous}",
                             "--config.train.num_steps=100000", "--config.train.checkpoint_every=200",
                             "--config.train.log_every=10", cache=cache),
                     preexec_fn=_file_limit(100_000) if method == "size limit" else None)
        for line in proc.stdout:
          if line.startswith("step 150/"):
            break
        if method == "immutable":
          subprocess.run(["chattr", "+i", os.path.join(workdir, "checkpoints")], check=True)
        began = time.time()
        code, out = finish(proc, timeout=120)
        if method == "immutable":
          subprocess.run(["chattr", "-i", os.path.join(workdir, "checkpoints")], check=True)
        lines = out.strip().splitlines()
        errors = [l for l in lines if l.startswith("error:")]
        last = max([i for i, l in enumerate(lines) if l.startswith("step ")], default=-1)
        results.append((code, time.time() - began, lines[last].split(" |")[0] if last >= 0 else "",
                        len(lines) - last - 1, errors[0] if errors else ""))
      how = ("checkpoints folder made immutable (chattr +i) at step 150" if method == "immutable" else
             "file-size limit 100 kB: the array file of the step-200 checkpoint cannot be written")
      row(f"failed {'async' if asynchronous else 'sync'} save ({how})", len(results),
          "; ".join(f"exit {c}, {t:.1f} s after step 150, last step line `{s_}`, {n} line(s) after it"
                    for c, t, s_, n, _ in results) + f"; `{results[0][4][:60]} ... {results[0][4][-50:]}`")
  results = []
  for attempt in range(2):
    workdir = os.path.join(root, f"full_{attempt}")
    os.makedirs(workdir)
    mounted = root_user and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", workdir]).returncode == 0
    try:
      code, out, seconds = run(command(workdir, "--config.train.num_steps=100000", cache=cache),
                               preexec_fn=None if mounted else _file_limit(100_000))
    finally:
      if mounted:
        subprocess.run(["umount", workdir], check=True)
    errors = [l for l in out.splitlines() if l.startswith("error:")]
    noise = sum(1 for l in out.splitlines() if not l.startswith(("step ", "first step", "error:")))
    results.append((code, noise, errors[0] if errors else ""))
  how = "a 1 MiB tmpfs workdir" if root_user else "file-size limit"
  row(f"disk full ({how})", len(results), "; ".join(f"exit {c}, {n} other lines" for c, n, _ in results) +
      f"; `...{results[0][2][-70:]}`")


def _file_limit(limit):
  import resource  # pylint: disable=g-import-not-at-top

  def set_limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return set_limit


def bad_inputs(root, reference, cache):
  cases = [("eval split too small", ["--config.train.eval_every=50", "--config.train.eval_batch_size=100000"]),
           ("sampler top_p=2 (periodic samples)", ["--config.train.sample_every=50", "--config.sampler.top_p=2.0"]),
           ("sampler 'dfm' on the cosine grid", ["--config.train.sample_every=50", "--config.sampler.name=dfm"]),
           ("train.eval_batches=0", ["--config.train.eval_every=50", "--config.train.eval_batches=0"]),
           ("train.checkpoint_every=-1", ["--config.train.checkpoint_every=-1"])]
  for name, flags in cases:
    workdir = os.path.join(root, "bad_" + name.split()[0].replace(".", "_"))
    code, out, seconds = run(command(workdir, *flags, cache=cache))
    wrote = os.path.isdir(os.path.join(workdir, "checkpoints"))
    row(f"bad input: {name}", 1, f"exit {code} after {seconds:.1f} s, before step 1 (no step line: "
        f"{'step 1/' not in out}), checkpoints written: {wrote}; `{out.strip().splitlines()[-1][:110]}`")
  workdir = os.path.join(root, "grad_clip")
  shutil.copytree(reference, workdir)
  code, out, seconds = run(command(workdir, "--config.optim.grad_clip=0", f"--config.train.num_steps={STEPS + 5}",
                                   cache=cache))
  row("resume with optim.grad_clip switched off", 1,
      f"exit {code} after {seconds:.1f} s; `{out.strip().splitlines()[-1][-120:]}`")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kills", type=int, default=12, help="kill -9 tries per save mode")
  parser.add_argument("--out", default=None, help="also write the markdown table here")
  parser.add_argument("--parts", default="kills,damaged,lock,saves,inputs",
                      help="comma-separated subset of kills,damaged,lock,saves,inputs")
  args = parser.parse_args()
  began = time.time()
  root = tempfile.mkdtemp(prefix="md4_faults_")
  cache = os.path.join(root, "jax_cache")
  reference = os.path.join(root, "reference")
  code, out, _ = run(command(reference, cache=cache))
  assert code == 0, out
  print("| fault | tried | outcome |\n|---|---|---|", flush=True)
  parts = args.parts.split(",")
  if "kills" in parts:
    kill_chain(root, reference, cache, False, args.kills, 0)
    kill_chain(root, reference, cache, True, args.kills, 3)
  if "damaged" in parts:
    damaged(root, reference, cache)
  if "lock" in parts:
    second_run(root, cache)
  if "saves" in parts:
    failed_saves(root, cache)
  if "inputs" in parts:
    bad_inputs(root, reference, cache)
  print(f"\n{time.time() - began:.0f} s in all", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      f.write("| fault | tried | outcome |\n|---|---|---|\n" + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in ROWS))
  shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
