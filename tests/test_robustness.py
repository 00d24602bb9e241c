"""Runs that never hang, never clobber each other, never lose work: the workdir lock (two real processes), a failed
save (a subprocess with a file-size limit, under a timeout that fails the test), damaged checkpoints (real files
truncated, zeroed, deleted), inputs checked before step 1, replayed metric rows, a changed optimizer layout."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from md4_jax.training import checkpoint, experiment, metrics, workdir_lock
from md4_jax import train
from md4_jax.evaluation import nelbo
from train_configs import ROOT, tiny_config
from test_train import checkpoint_steps, saved_state

TINY = ["--config", "tests/tiny_experiment.py", "--compilation_cache_dir="]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), JAX_PLATFORMS="cpu")


def _start(args, **kwargs):
  return subprocess.Popen([sys.executable, "-m", "md4_jax.train", *TINY, *args], cwd=ROOT, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(proc, timeout):
  """(returncode, output); a process still running after `timeout` seconds is killed and fails the test."""
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    pytest.fail(f"still running after {timeout}s (hung):\n{out[-3000:]}")
  return proc.returncode, out


# ---- the workdir lock


def _hold_lock(workdir):
  """A real process holding the lock of `workdir` until killed; returns it once the lock is taken."""
  code = ("import sys, time; from md4_jax.training.workdir_lock import WorkdirLock; "
          "WorkdirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)")
  proc = subprocess.Popen([sys.executable, "-c", code, str(workdir)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                          text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_live_lock_refuses_and_a_killed_holders_lock_does_not_block(tmp_path, capsys):
  holder = _hold_lock(tmp_path)
  try:
    with pytest.raises(workdir_lock.WorkdirLockedError, match=rf"in use by another run \(host '.+', pid "
                                                              rf"{holder.pid}, started 20\d\d-"):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  finally:
    holder.kill()  # kill -9: the lock file stays behind
    holder.wait()
  assert json.loads((tmp_path / workdir_lock.FILENAME).read_text())["pid"] == holder.pid
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  lock.acquire()
  assert f"pid {holder.pid}" in capsys.readouterr().out  # said what it moved aside
  assert json.loads((tmp_path / workdir_lock.FILENAME).read_text())["pid"] == os.getpid()
  aside = [p for p in os.listdir(tmp_path) if p.startswith(workdir_lock.FILENAME + ".stale-")]
  assert len(aside) == 1 and json.loads((tmp_path / aside[0]).read_text())["pid"] == holder.pid  # kept
  lock.release()
  assert not (tmp_path / workdir_lock.FILENAME).exists()


def test_lock_of_another_host_is_stale_only_after_its_lease(tmp_path):
  path = tmp_path / workdir_lock.FILENAME
  other = {"host": "node-that-is-not-this-one", "pid": 1, "started": time.time(), "token": "t"}
  path.write_text(json.dumps(other))
  with pytest.raises(workdir_lock.WorkdirLockedError, match="node-that-is-not-this-one"):
    workdir_lock.WorkdirLock(str(tmp_path), lease_s=60).acquire()  # heartbeat 0 s ago: alive
  old = time.time() - 61
  os.utime(path, (old, old))
  lock = workdir_lock.WorkdirLock(str(tmp_path), lease_s=60)
  lock.acquire()  # no heartbeat for longer than the lease: a lost node
  lock.release()


def test_holder_heartbeat_keeps_its_lease(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path), heartbeat_s=0.05)
  lock.acquire()
  path = tmp_path / workdir_lock.FILENAME
  os.utime(path, (0, 0))
  time.sleep(0.5)
  assert time.time() - os.stat(path).st_mtime < 1.0
  lock.release()


def test_second_training_run_on_a_live_workdir_refuses_at_once(tmp_path):
  first = _start(["--workdir", str(tmp_path), "--config.train.num_steps=100000", "--config.train.log_every=1",
                  "--config.train.checkpoint_every=0"])
  try:
    for line in first.stdout:
      if line.startswith("step 2/"):
        break
    began = time.time()
    second = _start(["--workdir", str(tmp_path), "--config.seed=1"])
    code, out = _finish(second, timeout=60)
    assert code == 1 and f"pid {first.pid}" in out and "in use by another run" in out, out
    assert len(out.strip().splitlines()) == 1, out
    assert time.time() - began < 30  # refused before building anything
    first.send_signal(signal.SIGTERM)
    code, out = _finish(first, timeout=120)
    assert code == 0 and "SIGTERM: saved checkpoint" in out, out
  finally:
    first.kill()
  assert not (tmp_path / workdir_lock.FILENAME).exists()  # released at exit


@pytest.mark.multiprocess
def test_all_processes_of_a_run_stop_on_a_held_lock(tmp_path):
  """2 processes (launch/local.py): process 0 finds the lock held and says by whom; process 1 learns it from the
  broadcast and stops too (neither waits in a collective)."""
  holder = _hold_lock(tmp_path)
  try:
    launch = [sys.executable, "-m", "launch.local", "--num_processes", "2", "--devices_per_process", "4",
              "--timeout_s", "100", "--"]
    proc = subprocess.Popen(launch + [sys.executable, "-m", "md4_jax.train", *TINY, "--workdir", str(tmp_path)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    code, out = _finish(proc, timeout=150)
  finally:
    holder.kill()
    holder.wait()
  assert code not in (0, 124) and f"[0] error: workdir {tmp_path} is in use by another run" in out, out
  assert f"pid {holder.pid}" in out and "timed out" not in out.lower(), out
  assert not (tmp_path / "checkpoints").exists()


# ---- a failed save


def _file_size_limit(limit):
  def set_limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return set_limit


@pytest.mark.parametrize("asynchronous", [True, False])
def test_failed_save_exits_nonzero_with_one_line(tmp_path, asynchronous):
  """The step-200 checkpoint cannot be written (its largest file exceeds the size limit): the run stops soon
  after (not at the step-400 checkpoint, the next save) with one line, exit 1, and no hang."""
  proc = _start(["--workdir", str(tmp_path), f"--config.train.async_checkpoint={asynchronous}",
                 "--config.train.num_steps=100000", "--config.train.log_every=10",
                 "--config.train.checkpoint_every=200"], preexec_fn=_file_size_limit(100_000))
  code, out = _finish(proc, timeout=120)
  assert code == 1, out
  lines = [l.strip() for l in out.strip().splitlines()]  # threads printing at once can interleave indents
  errors = [l for l in lines if l.startswith("error: writing checkpoint")]
  assert len(errors) == 1 and "/checkpoints/200 failed" in errors[0] and "too large" in errors[0], out
  assert "step 200/" in out and "step 400/" not in out, out
  others = [l for l in lines if not l.startswith(("step ", "first step done"))]
  assert others == errors, out  # no Orbax or TensorStore tracebacks
  assert checkpoint_steps(str(tmp_path)) == []


def test_stderr_filter_drops_only_the_closed_event_loop_tracebacks():
  noise = ['Traceback (most recent call last):',
           '  File "/usr/lib/python3.11/asyncio/base_events.py", line 806, in call_soon_threadsafe',
           '    self._check_closed()',
           '  File "/usr/lib/python3.11/asyncio/base_events.py", line 519, in _check_closed',
           "    raise RuntimeError('Event loop is closed')", 'RuntimeError: Event loop is closed']
  kept = ["step 1/8", "Traceback (most recent call last):", '  File "train.py", line 1, in <module>',
          "ValueError: a real error", "error: the last line"]
  interleaved = noise[:3] + noise[:2] + [kept[0]] + noise[3:] + kept[1:3] + noise[2:] + kept[3:]  # two threads
  # headers whose next line is another thread's: dropped, whatever their indentation (only a File line keeps one)
  interleaved[-1:-1] = [noise[0], "    " + noise[0], "Event loop is closed    self._check_closed()",
                        ": Event loop is closed", "RuntimeError"]
  code = ("import sys; from md4_jax.training import stderr_filter; f = stderr_filter.ClosedLoopFilter(); "
          f"print({chr(10).join(interleaved)!r}, file=sys.stderr); f.close()")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
  assert result.stderr.splitlines() == kept


# ---- damaged checkpoints


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """An uninterrupted 8-step run with checkpoints at steps 4 and 8."""
  workdir = tmp_path_factory.mktemp("straight")
  train.train_and_evaluate(tiny_config(num_steps=8), str(workdir))
  return workdir


def _array_files(folder):
  """The array data files of a checkpoint step, largest first. Which arrays share a file depends on the write's
  timing: the EMA parameters alone (what the binaries read) may not touch the largest one, so all are damaged."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(folder, "state")) for f in fs
           if os.sep + "d" + os.sep in os.path.join(d, f)]
  return [os.path.relpath(f, folder) for f in sorted(files, key=os.path.getsize, reverse=True)]


DAMAGE = [("state/manifest.ocdbt", "truncate", "its arrays cannot be read"),
          ("state/manifest.ocdbt", "delete", "state/manifest.ocdbt is missing"),
          ("state/_METADATA", "zero", "state/_METADATA is empty"),
          ("state/_METADATA", "truncate", "state/_METADATA is not valid JSON"),
          ("meta/metadata", "delete", "meta/metadata is missing"),
          ("data/metadata", "truncate", "data/metadata is not valid JSON"),
          ("arrays", "zero", "its arrays cannot be read"),
          ("arrays", "delete", "its arrays cannot be read")]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax coroutines of a failed read
@pytest.mark.parametrize("name,how,said", DAMAGE)
def test_damaged_newest_checkpoint_is_named_set_aside_and_skipped(straight_run, tmp_path, capsys, name, how, said):
  workdir = tmp_path / "run"
  shutil.copytree(straight_run, workdir)
  folder = workdir / "checkpoints" / "8"
  names = _array_files(folder) if name == "arrays" else [name]
  name, size = names[0], (folder / names[0]).stat().st_size
  for path in (folder / n for n in names):
    if how == "delete":
      path.unlink()
    else:
      path.write_bytes(b"\0" * path.stat().st_size if how == "zero" else path.read_bytes()[:path.stat().st_size // 2])
  config = tiny_config(num_steps=8)
  # The binaries: named, the step before used (--step not given), or refused (--step=8); nothing moved.
  assert experiment.restore_ema(config, str(workdir)).step == 4
  assert f"checkpoints/8 is damaged: {said}" in capsys.readouterr().err
  with pytest.raises(ValueError, match=f"checkpoints/8 is damaged: {said}"):
    experiment.restore_ema(config, str(workdir), 8)
  # Training: named, moved aside untouched, resumed from step 4 and ends as the uninterrupted run did.
  train.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  assert f"checkpoints/8 is damaged: {said}" in out and "resumed from" in out and out.count("checkpoints/4") == 1
  aside = os.listdir(workdir / checkpoint.DAMAGED_DIR)
  assert len(aside) == 1 and aside[0].startswith("8-")
  moved = workdir / checkpoint.DAMAGED_DIR / aside[0] / name
  assert (not moved.exists()) if how == "delete" else moved.stat().st_size == (size if how == "zero" else size // 2)
  assert checkpoint_steps(str(workdir)) == [4, 8]
  for a, b in zip(jax.tree.leaves(saved_state(str(straight_run), 8)), jax.tree.leaves(saved_state(str(workdir), 8))):
    np.testing.assert_array_equal(a, b)
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  train_steps = [r["step"] for r in rows if "train/objective" in r]
  assert train_steps == [2, 4, 6, 8]  # the replayed steps 6 and 8 once each


def test_changed_optimizer_layout_names_grad_clip(straight_run, tmp_path):
  shutil.copytree(straight_run, tmp_path / "run")
  config = tiny_config(num_steps=12, **{"optim.grad_clip": 0.0})
  with pytest.raises(checkpoint.MismatchError, match=r"gradient clipping on \(optim.grad_clip > 0\).*"
                                                     r"resume with optim.grad_clip as it was"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert checkpoint_steps(str(tmp_path / "run")) == [4, 8]
  assert not (tmp_path / "run" / checkpoint.DAMAGED_DIR).exists()  # a config change is not damage


# ---- inputs checked before step 1, and work saved before evaluation and sampling


@pytest.mark.parametrize("overrides,message", [
    ({"train.eval_every": 4, "train.eval_batch_size": 100_000}, "gives no full global batch of 100000"),
    ({"train.sample_every": 4, "sampler.top_p": 2.0}, r"top_p must lie in \(0, 1\]"),
    ({"train.sample_every": 4, "sampler.name": "dfm"}, "grid must be 'uniform'"),
    ({"train.eval_every": 4, "train.eval_batches": 0}, "train.eval_batches must be >= 1 or -1"),
    ({"train.log_every": 0}, "train.log_every must be >= 1"),
])
def test_bad_inputs_met_after_step_1_fail_before_it(tmp_path, monkeypatch, overrides, message):
  class NoStep:  # compiles (on the worker thread, while the inputs are checked) to a step that must not run
    def lower(self, *args):
      return self

    def compile(self):
      return self

    def __call__(self, *args):
      raise AssertionError("a training step ran before the input checks")
  monkeypatch.setattr(train, "jit_train_step", lambda exp: NoStep())
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(tiny_config(num_steps=8, **overrides), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_due_checkpoint_is_saved_before_evaluation(tmp_path, monkeypatch):
  def failing(*args, **kwargs):
    raise OSError("evaluation failed")
  monkeypatch.setattr(nelbo, "evaluate", failing)
  with pytest.raises(OSError, match="evaluation failed"):
    train.train_and_evaluate(tiny_config(num_steps=8, **{"train.eval_every": 4}), str(tmp_path))
  assert checkpoint_steps(str(tmp_path)) == [4]  # the work up to the failing step is kept


def test_replayed_metric_rows_are_dropped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": s, "train/objective": float(s)} for s in (2, 4, 6)] + [{"step": 4, "eval/bits_per_token": 1.0}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "train/obj')  # cut off by kill -9
  assert metrics.drop_rows_after(str(path), 4) == 2  # step 6 and the cut-off line
  assert [json.loads(l) for l in path.read_text().splitlines()] == [rows[0], rows[1], rows[3]]
  assert metrics.drop_rows_after(str(path), 4) == 0
