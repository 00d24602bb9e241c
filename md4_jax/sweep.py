"""Runs an experiment's sweep (its `get_sweep()`, see md4_jax.sweeps.sweep_spec) and writes one report.

    python -m md4_jax.sweep --config experiments/kjv_tiny.py --workdir ROOT [--config.k=v ...] \\
        [--parallel K] [--only REGEX] [--list] [--report_only] [--sample_quality 'num_steps=16;num_steps=64']

Every member's config is resolved and checked first (unknown key, bad value, duplicate names, missing data: one
error naming the member, nothing started). Then each member runs as an ordinary training process,

    python -m md4_jax.train --config X --workdir ROOT/<name> --config.k=v ... --compilation_cache_dir=CACHE

K at a time (default 1), all sharing one persistent compilation cache so members of equal shapes compile once.
A member whose metrics.jsonl reached its train.num_steps is skipped; an interrupted one resumes from its
checkpoints; a failed one is recorded (exit code, last log lines in ROOT/_sweep/<name>.json) and the sweep goes
on, exiting 1 at the end. Output of member <name> goes to ROOT/_sweep/<name>.log; the console shows
`member i/N, step, steps/s, the member's and the sweep's ETA`. SIGTERM / SIGINT are passed on to the running
members (which save a checkpoint and stop); rerunning the command resumes.

--member_args I prints member I's training arguments, one per line, for launchers (launch/slurm.sbatch's array
mode). --multihost (launch/tpu_pod.sh's sweep mode) passes --multihost to every member and runs one at a time.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

from md4_jax import cli
from md4_jax.training import atomic
from md4_jax.sweeps import sweep_report
from md4_jax.sweeps import sweep_spec
from md4_jax.training.metrics import fmt_duration

_POLL_S = 0.5
_LOG_TAIL = 20


def train_args(config_path: str, root: str, member: sweep_spec.Member, common: list[str]) -> list[str]:
  """The arguments after `python -m md4_jax.train` of one member."""
  return ["--config", config_path, "--workdir", os.path.join(root, member.name)] + member.flag_args(common)


def slot_env(slot: int, parallel: int, environ: dict) -> dict:
  """The environment of the member run in slot `slot` of `parallel`: with visible GPUs (CUDA_VISIBLE_DEVICES)
  divisible by `parallel`, slot s gets the s-th equal share of them; otherwise the environment as it is."""
  env = dict(environ)
  visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
  if parallel > 1 and visible and len(visible) % parallel == 0:
    share = len(visible) // parallel
    env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[slot * share:(slot + 1) * share])
  return env


try:
  _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl  # loaded here: the forked child only calls it
except (OSError, AttributeError):  # not Linux / glibc
  _PRCTL = None


def _die_with_parent() -> None:
  """In the child between fork and exec: SIGTERM when the sweep process dies, so no member outlives a killed
  sweep (a SIGKILL cannot be forwarded)."""
  if _PRCTL is not None:
    _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(command: list[str], env: dict, log) -> subprocess.Popen:
  with warnings.catch_warnings():
    # JAX (imported for validation) warns at every fork; the child runs only _die_with_parent before exec.
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)


class _Run:
  """One member's training process and what the sweep has read of its metrics.jsonl."""

  def __init__(self, member, total, num_steps, command, env, root, host):
    self.member, self.position, self.total, self.num_steps = member, member.index + 1, total, num_steps
    self.host = host  # '' or (multi-host) this worker's hostname, in the names of its log and record
    self.workdir = os.path.join(root, member.name)
    self.root = root
    self.start = time.time()
    self.rate = None     # the last logged steps/s
    rows = sweep_report.read_metrics(self.workdir)  # an interrupted run's rows, if any
    self.step, self.rows_seen = sweep_report.steps_done(rows), len(rows)
    self.previous = sweep_report.read_status(root, member.name)
    os.makedirs(os.path.join(root, sweep_spec.RESERVED), exist_ok=True)
    self.log = open(run_log(root, member.name, host), "a", encoding="utf-8")
    self.log.write(f"\n=== sweep start {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(command)}\n")
    self.log.flush()
    self.proc = _spawn(command, env, self.log)
    self.record("running")

  def record(self, status: str, exit_code: int | None = None) -> None:
    wall = self.previous.get("wall_s", 0.0) + time.time() - self.start
    record = {"status": status, "exit_code": exit_code, "wall_s": wall, "steps": self.step, "pid": self.proc.pid}
    if status == "failed":
      with open(run_log(self.root, self.member.name, self.host), encoding="utf-8") as f:
        record["log_tail"] = f.readlines()[-_LOG_TAIL:]
    atomic.write(sweep_report.status_path(self.root, self.member.name, host=self.host),
                 json.dumps(record, indent=1) + "\n")

  def new_rows(self) -> list[dict]:
    rows = sweep_report.read_metrics(self.workdir)
    new, self.rows_seen = rows[self.rows_seen:], len(rows)
    for row in new:
      self.step = max(self.step, int(row["step"]))
      self.rate = row.get("train/steps_per_second", self.rate)
    return new

  def eta_s(self) -> float | None:
    return None if not self.rate else (self.num_steps - self.step) / self.rate


def run_members(config_path: str, root: str, members: list[sweep_spec.Member], num_steps: dict[str, int],
                common: list[str], *, parallel: int = 1, cache_dir: str | None = None,
                multihost: bool = False, total: int | None = None) -> dict[str, str]:
  """Runs the unfinished `members` (K = `parallel` at a time); returns {name: 'done' | 'skipped' | 'failed' |
  'interrupted'}. `total`: the size of the whole sweep, for the progress lines."""
  total = total or len(members)
  outcome, pending = {}, []
  for m in members:
    if sweep_report.steps_done(sweep_report.read_metrics(os.path.join(root, m.name))) >= num_steps[m.name]:
      outcome[m.name] = "skipped"
      print(f"[sweep {m.index + 1}/{total}] {m.name}: finished before, skipped", flush=True)
    else:
      pending.append(m)
  extra = ([f"--compilation_cache_dir={cache_dir}"] if cache_dir is not None else []) + (
      ["--multihost"] if multihost else [])
  host = socket.gethostname() if multihost else ""  # every worker of a slice runs this loop: own logs
  running: dict[int, _Run] = {}
  walls: list[float] = []  # seconds per member run to completion here
  stop = []

  def forward(signum, frame):
    del frame
    stop.append(signum)
    for run in running.values():
      if run.proc.poll() is None:
        run.proc.send_signal(signal.SIGTERM)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    while running or (pending and not stop):
      for slot in range(parallel):
        if slot not in running and pending and not stop:
          m = pending.pop(0)
          command = [sys.executable, "-m", "md4_jax.train"] + train_args(config_path, root, m, common) + extra
          running[slot] = _Run(m, total, num_steps[m.name], command, slot_env(slot, parallel, os.environ), root, host)
          print(f"[sweep {m.index + 1}/{total}] {m.name}: started (log {run_log(root, m.name, host)})", flush=True)
      time.sleep(_POLL_S)
      for slot, run in list(running.items()):
        new = run.new_rows()
        shown = [r for r in new if sweep_report.EVAL_KEY in r] + [r for r in new if "train/objective" in r][-1:]
        for row in shown:
          _progress(run, row, walls, running, len(pending), parallel)
        code = run.proc.poll()
        if code is None:
          continue
        run.new_rows()
        run.log.close()
        del running[slot]
        if run.step >= run.num_steps and code == 0:
          status = "done"
          walls.append(time.time() - run.start)
          print(f"[sweep {run.position}/{total}] {run.member.name}: done in {fmt_duration(walls[-1])}", flush=True)
        elif stop or code == 0:  # stopped by a signal: resumable
          status = "interrupted"
          print(f"[sweep {run.position}/{total}] {run.member.name}: interrupted (last logged step {run.step}; it "
                "resumes from its last checkpoint)", flush=True)
        else:
          status = "failed"
          print(f"[sweep {run.position}/{total}] {run.member.name}: FAILED (exit {code}); last lines in "
                f"{run_log(root, run.member.name, host)}", file=sys.stderr, flush=True)
        outcome[run.member.name] = status
        run.record(status, code)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  for m in pending:
    outcome[m.name] = "interrupted"
  return outcome


def run_log(root: str, name: str, host: str = "") -> str:
  return sweep_report.status_path(root, name, "log", host)


def _progress(run: _Run, row: dict, walls: list[float], running: dict, pending: int, parallel: int) -> None:
  """A console line for a logged row of a member: a validation value, or step, steps/s, its ETA and the sweep's."""
  if sweep_report.EVAL_KEY in row:
    print(f"[sweep {run.position}/{run.total}] {run.member.name}: step {row['step']} validation bits/token "
          f"{row[sweep_report.EVAL_KEY]:.4f}", flush=True)
    return
  parts = [f"[sweep {run.position}/{run.total}] {run.member.name}: step {row['step']}/{run.num_steps}"]
  eta = run.eta_s()
  if eta is not None:
    parts += [f"{run.rate:.2f} steps/s", f"member ETA {fmt_duration(eta)}"]
    # a member's cost: the mean of those run to completion here, else this one's elapsed time plus its ETA
    per_member = sum(walls) / len(walls) if walls else time.time() - run.start + eta
    etas = [r.eta_s() or 0.0 for r in running.values()]
    parts.append(f"sweep ETA {fmt_duration(max(etas) + -(-pending // parallel) * per_member)}")
  print(" | ".join(parts), flush=True)


def define_flags(fv) -> None:
  """The sweep's flags besides --config (the experiment file with get_sweep(), path or path:arg) and --workdir."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_integer("parallel", 1, "members run at once (GPUs split between them)", flag_values=fv)
  flags.DEFINE_string("only", None, "run / report only members whose name matches this regex", flag_values=fv)
  flags.DEFINE_bool("list", False, "print the members and their overrides, then stop", flag_values=fv)
  flags.DEFINE_bool("report_only", False, "write the report from the workdirs as they are", flag_values=fv)
  flags.DEFINE_bool("no_report", False, "skip the report at the end", flag_values=fv)
  flags.DEFINE_integer("member_args", None, "print member I's md4_jax.train arguments, one per line (for "
                       "launchers), then stop", flag_values=fv)
  flags.DEFINE_integer("devices", 1, "devices each member runs on, for validating meshes and batch sizes",
                       flag_values=fv)
  flags.DEFINE_bool("multihost", False, "pass --multihost to every member (TPU pod)", flag_values=fv)
  flags.DEFINE_string("compilation_cache_dir", None, "the members' shared JAX compilation cache (default: "
                      "md4_jax.train's)", flag_values=fv)
  flags.DEFINE_string("sample_quality", None, "';'-separated sampler overrides (e.g. 'num_steps=16,grid=cosine;"
                      "num_steps=64'; '' = the experiment's sampler): sample each finished member and add quality "
                      "columns", flag_values=fv)
  flags.DEFINE_integer("quality_samples", 256, "samples per member and sampler spec", flag_values=fv)
  flags.DEFINE_string("scorer_config", None, "--sample_quality: an 'ar' experiment file (Gen PPL)", flag_values=fv)
  flags.DEFINE_string("scorer_workdir", None, "--sample_quality: the scorer's training workdir", flag_values=fv)


def main(argv: list[str] | None = None) -> int:
  """`python -m md4_jax.sweep` (argv as sys.argv); returns the exit code (module docstring)."""
  argv = sys.argv if argv is None else argv
  parsed = cli.parse(argv, __doc__, define_flags, workdir_help="ROOT: member <name> trains in ROOT/<name>")
  if isinstance(parsed, int):
    return parsed
  args = parsed[0]
  config_path = cli.flag_value(argv, "config")[0]  # the file (path[:arg]) the members are started with
  common = [a for a in argv[1:] if a.startswith("--config.")]  # overrides passed on to every member
  if any("=" not in a for a in common):
    return cli.usage_error("config overrides take the form --config.key=value")
  if args.parallel < 1 or (args.multihost and args.parallel != 1):
    return cli.usage_error(f"--parallel={args.parallel}: must be >= 1 (and 1 with --multihost)")
  import jax  # pylint: disable=g-import-not-at-top
  # Validation sees `--devices` CPU devices and never claims an accelerator the members need.
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", args.devices)
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  root = os.path.abspath(args.workdir)
  try:
    members = sweep_spec.load_sweep(config_path)
    if args.member_args is not None:
      if not 0 <= args.member_args < len(members):
        raise ValueError(f"--member_args={args.member_args}: the sweep has members 0..{len(members) - 1}")
      members = [members[args.member_args]]
    chosen = sweep_spec.select(members, args.only)
    if args.list:
      for m in chosen:
        print(f"{m.index}\t{m.name}\t{json.dumps(m.overrides)}")
      print(f"{len(chosen)} of {len(members)} members (SLURM: sbatch --array=0-{len(members) - 1} ...)")
      return 0
    configs = sweep_spec.validate(config_path, chosen, common)
  except ValueError as error:
    cli.print_error(str(error))
    return 2
  if args.member_args is not None:
    print("\n".join(train_args(config_path, root, chosen[0], common)))
    return 0
  num_steps = {name: c.train.num_steps for name, c in configs.items()}
  failed = []
  if not args.report_only:
    from md4_jax import train  # pylint: disable=g-import-not-at-top
    cache = train.DEFAULT_COMPILATION_CACHE if args.compilation_cache_dir is None else args.compilation_cache_dir
    print(f"sweep of {len(chosen)} member(s) in {root}, {args.parallel} at a time; compilation cache {cache!r}",
          flush=True)
    outcome = run_members(config_path, root, chosen, num_steps, common, parallel=args.parallel,
                          cache_dir=cache, multihost=args.multihost, total=len(members))
    failed = [name for name, o in outcome.items() if o == "failed"]
    if any(o == "interrupted" for o in outcome.values()):
      print("sweep interrupted; rerun the same command to resume", file=sys.stderr, flush=True)
      return 3
  if args.sample_quality is not None:
    from md4_jax.sweeps import sweep_quality  # pylint: disable=g-import-not-at-top
    scorer = ["--scorer_config", args.scorer_config, "--scorer_workdir", args.scorer_workdir] if (
        args.scorer_config) else []
    sweep_quality.run_all(config_path, root, chosen, common, args.sample_quality, args.quality_samples,
                          num_steps, scorer)
  if not args.no_report:
    rows = sweep_report.write(root, chosen, num_steps, f"sweep {os.path.basename(config_path)} in {root}")
    print(f"report: {os.path.join(root, 'report.md')} ({sum(r['status'] == 'done' for r in rows)} of "
          f"{len(rows)} members done)", flush=True)
  if failed:
    print(f"{len(failed)} member(s) failed: {', '.join(failed)}", file=sys.stderr, flush=True)
    return 1
  return 0


run = cli.entry(main)  # console entry point (md4-sweep) and `python -m md4_jax.sweep`


if __name__ == "__main__":
  run()
