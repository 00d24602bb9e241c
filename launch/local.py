"""Local multi-process launcher: N JAX processes on this machine, each with K CPU devices, joined by jax.distributed.

    python -m launch.local --num_processes 2 --devices_per_process 4 -- \
        python -m md4_jax.train --config experiments/demo.py --workdir /tmp/md4_2x4

A stand-in for a TPU pod or a GPU cluster that exercises the same multi-process code paths (per-process data
shards, cross-process collectives, Orbax checkpoints written by several processes). Process i gets

    JAX_COORDINATOR_ADDRESS=localhost:<free port>  JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i
    JAX_PLATFORMS=cpu  JAX_NUM_CPU_DEVICES=K

(md4_jax.train joins the run when JAX_COORDINATOR_ADDRESS is set; CPU collectives across processes use gloo, the
jax default). Output lines are prefixed with '[i] '. When a process fails, the others are stopped and the
launcher exits with that process's status; SIGTERM / SIGINT to the launcher are passed on to every process (a
simulated preemption).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

_GRACE_S = 10.0  # seconds a process gets to exit after SIGTERM before SIGKILL


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, devices_per_process: int, port: int) -> dict[str, str]:
  """The environment of process `process_id` of a local run."""
  env = dict(os.environ)
  env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(num_processes),
             JAX_PROCESS_ID=str(process_id), JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices_per_process),
             PYTHONUNBUFFERED="1")
  return env


def _pump(process_id: int, stream, out) -> None:
  for line in stream:
    out.write(f"[{process_id}] {line}")
    out.flush()


def launch(command: list[str], num_processes: int, devices_per_process: int, timeout_s: float | None = None) -> int:
  """Runs `command` as `num_processes` processes; returns 0 if all succeed, else the first failure's status
  (124 when `timeout_s` passes first)."""
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError(f"num_processes={num_processes}, devices_per_process={devices_per_process}; both must be >= 1")
  if not command:
    raise ValueError("no command given; put it after '--', e.g. -- python -m md4_jax.train --config ...")
  out = sys.stdout
  port = free_port()
  procs = [subprocess.Popen(command, env=process_env(i, num_processes, devices_per_process, port),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
           for i in range(num_processes)]
  for i, p in enumerate(procs):
    out.write(f"[launch] process {i}: pid {p.pid}\n")
  out.flush()
  pumps = [threading.Thread(target=_pump, args=(i, p.stdout, out), daemon=True) for i, p in enumerate(procs)]
  for t in pumps:
    t.start()

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    status = _wait(procs, None if timeout_s is None else time.time() + timeout_s)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    _stop(procs)
    for t in pumps:
      t.join(timeout=5)
  return status


def _wait(procs: list[subprocess.Popen], deadline: float | None) -> int:
  """Waits for all processes; at the first non-zero exit returns its status (the caller stops the rest)."""
  while True:
    if deadline is not None and time.time() > deadline:
      print("[launch] timed out; stopping all processes", file=sys.stderr, flush=True)
      return 124
    codes = [p.poll() for p in procs]
    failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
    if failed:
      i, code = failed[0]
      print(f"[launch] process {i} exited with status {code}; stopping the others", file=sys.stderr, flush=True)
      return code if code > 0 else 128 - code  # killed by signal s: 128 + s, as a shell reports it
    if all(c == 0 for c in codes):
      return 0
    time.sleep(0.1)


def _stop(procs: list[subprocess.Popen]) -> None:
  """SIGTERM, then SIGKILL after a grace period, to every process group still running."""
  running = [p for p in procs if p.poll() is None]
  for p in running:
    _signal_group(p, signal.SIGTERM)
  deadline = time.time() + _GRACE_S
  for p in running:
    try:
      p.wait(timeout=max(deadline - time.time(), 0.1))
    except subprocess.TimeoutExpired:
      _signal_group(p, signal.SIGKILL)
      p.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
  try:
    os.killpg(proc.pid, signum)
  except ProcessLookupError:  # the group exited since the last poll
    pass


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  split = argv.index("--") if "--" in argv else len(argv)
  parser = argparse.ArgumentParser(prog="python -m launch.local", description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_processes", "-n", type=int, default=2)
  parser.add_argument("--devices_per_process", "-d", type=int, default=4)
  parser.add_argument("--timeout_s", type=float, default=None, help="stop all processes after this many seconds")
  args = parser.parse_args(argv[:split])
  try:
    return launch(argv[split + 1:], args.num_processes, args.devices_per_process, args.timeout_s)
  except ValueError as error:
    parser.error(str(error))


if __name__ == "__main__":
  sys.exit(main())
