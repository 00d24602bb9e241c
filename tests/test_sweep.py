"""Sweeps (md4_jax.sweep): definitions and names, validation before training, a 2 x 2 sweep with its report, a
killed sweep resumed, seeds grouped in the report, and the SLURM array / TPU slice launchers with stubs."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from md4_jax import sweep
from md4_jax.sweeps import sweep_report, sweep_spec
from train_configs import ROOT

SWEEP_EXPERIMENT = os.path.join(ROOT, "tests", "sweep_experiment.py")


def _env(tmp_path) -> dict:
  return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), JAX_PLATFORMS="cpu",
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONUNBUFFERED="1")


def _sweep_cli(args, tmp_path, **kwargs) -> subprocess.Popen:
  cache = os.path.join(os.path.dirname(str(tmp_path)), "sweep_cache")  # shared by this session's sweep tests
  return subprocess.Popen([sys.executable, "-m", "md4_jax.sweep", f"--compilation_cache_dir={cache}"] + args,
                          cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          **kwargs)


def _experiment(tmp_path, sweep_body: str, name: str = "exp.py") -> str:
  """An experiment file: tests/sweep_experiment.py's config with get_sweep() returning `sweep_body`."""
  path = tmp_path / name
  path.write_text(textwrap.dedent(f"""
      from md4_jax.sweeps import sweep_spec
      from train_configs import tiny_config

      def get_config():
        return tiny_config(num_steps=8)

      def get_sweep():
        return {sweep_body}
      """))
  return str(path)


def test_product_zip_and_member_names():
  grid = sweep_spec.product(sweep_spec.axis("diffusion.schedule", ("linear", "poly0.5")), sweep_spec.axis("seed", (0, 1)))
  assert grid == [{"diffusion.schedule": "linear", "seed": 0}, {"diffusion.schedule": "linear", "seed": 1},
                  {"diffusion.schedule": "poly0.5", "seed": 0}, {"diffusion.schedule": "poly0.5", "seed": 1}]
  assert sweep_spec.member_names(grid) == ["schedule-linear_seed-0", "schedule-linear_seed-1",
                                           "schedule-poly0.5_seed-0", "schedule-poly0.5_seed-1"]
  pairs = sweep_spec.zipped(sweep_spec.axis("optim.lr", (1e-3, 3e-4)), sweep_spec.axis("train.num_steps", (10, 20)))
  assert pairs == [{"optim.lr": 1e-3, "train.num_steps": 10}, {"optim.lr": 3e-4, "train.num_steps": 20}]
  assert sweep_spec.member_names(pairs) == ["lr-0.001_num_steps-10", "lr-0.0003_num_steps-20"]
  # two keys with one last part keep their whole dotted key; unsafe characters become '~'
  assert sweep_spec.member_names([{"model.size": "a/b", "sampler.size": 1}, {}]) == [
      "model.size-a~b_sampler.size-1", "base"]
  with pytest.raises(ValueError, match="equal lengths"):
    sweep_spec.zipped(sweep_spec.axis("seed", (0, 1)), sweep_spec.axis("optim.lr", (1.0,)))
  with pytest.raises(ValueError, match="'seed' is set by two"):
    sweep_spec.product(sweep_spec.axis("seed", (0,)), sweep_spec.axis("seed", (1,)))
  member = sweep_spec.Member(0, "x", {"seed": 3, "train.async_checkpoint": False, "data.image_shape": (8, 8, 1)})
  assert member.flag_args(["--config.optim.lr=0.1"]) == [
      "--config.optim.lr=0.1", "--config.seed=3", "--config.train.async_checkpoint=False",
      "--config.data.image_shape=(8,8,1)"]


@pytest.mark.parametrize("body, common, message", [
    ("[]", [], "non-empty list"),
    ("[{'seed': 0}, {'seed': 0}]", [], "members 0 and 1 share the name 'seed-0'"),
    ("[{'seed': 0}, {'train.nmu_steps': 5}]", [], r"member 1 \(nmu_steps-5, .*nmu_steps"),
    ("[{'seed': 0}, {'seed': 'zero'}]", [], "member 1 .*config.seed=zero"),
    ("[{'seed': 0}, {'data.path': '/nonexistent/corpus.txt'}]", [], "member 1 .*/nonexistent/corpus.txt"),
    ("[{'seed': 0}, {'diffusion.schedule': 'cosin'}]", [], "member 1 .*cosin"),
    # the mesh over this process's 8 devices: batch 12 does not split over them
    ("[{'seed': 0}, {'train.batch_size': 12}]", ["--config.mesh.data=-1"],
     r"member 1 .*batch_size=12 must be divisible by devices \(8\)"),
    ("[{'seed': None}]", [], "member 0, key 'seed': value None"),
    ("[{'seed': 0}]", ["--config.seed=1"], "--config.seed is swept"),
])
def test_bad_sweep_definitions_fail_before_any_training(tmp_path, body, common, message):
  path = _experiment(tmp_path, body)
  with pytest.raises(ValueError, match=message):
    sweep_spec.validate(path, sweep_spec.load_sweep(path), common)


def test_a_model_that_does_not_fit_the_data_fails_validation(tmp_path):
  """Builds (parameters have shapes) but its train step does not trace: a transformer on 8x8 images."""
  path = tmp_path / "digits_models.py"
  path.write_text(textwrap.dedent("""
      from train_configs import load_experiment

      def get_config():
        config = load_experiment("digits")
        config.train.update(batch_size=16, eval_batch_size=16)
        return config

      def get_sweep():
        return [{"model.kind": "unet"}, {"model.kind": "transformer"}]
      """))
  with pytest.raises(ValueError, match=r"member 1 \(kind-transformer.*z_t must have shape \[B, L\]"):
    sweep_spec.validate(str(path), sweep_spec.load_sweep(str(path)), [])


def test_bad_sweep_cli_exits_before_training_and_writes_nothing(tmp_path):
  path = _experiment(tmp_path, "[{'seed': 0}, {'train.nmu_steps': 5}]")
  root = tmp_path / "root"
  proc = _sweep_cli(["--config", path, "--workdir", str(root)], tmp_path)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 2 and "sweep member 1 (nmu_steps-5" in out and "nmu_steps" in out
  assert not root.exists()
  proc = _sweep_cli(["--config", str(tmp_path / "exp.py"), "--workdir", str(root), "--only", "lr"], tmp_path)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 2 and "--only='lr' matches none of the members: seed-0, nmu_steps-5" in out


def _last_eval(workdir) -> float:
  return [r for r in sweep_report.read_metrics(workdir) if "eval/bits_per_token" in r][-1]["eval/bits_per_token"]


def test_two_by_two_sweep_runs_in_parallel_reports_and_skips_finished_members(tmp_path):
  root = tmp_path / "root"
  listing = _sweep_cli(["--config", SWEEP_EXPERIMENT, "--workdir", str(root), "--list"], tmp_path)
  out, _ = listing.communicate(timeout=120)
  assert listing.returncode == 0 and "3\tschedule-cosine_seed-1\t" in out and "sbatch --array=0-3" in out
  proc = _sweep_cli(["--config", SWEEP_EXPERIMENT, "--workdir", str(root), "--parallel", "2"], tmp_path)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  names = [m.name for m in sweep_spec.load_sweep(SWEEP_EXPERIMENT)]
  assert all(f"{n}: done" in out for n in names) and "sweep ETA" in out
  with open(root / "report.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["name"] for r in rows] == names and all(r["status"] == "done" and r["steps"] == "8" for r in rows)
  for r in rows:  # the report's values are the members' last validation values
    assert float(r["bpt"]) == _last_eval(root / r["name"]) and float(r["bpt_stderr"]) > 0
  report = (root / "report.md").read_text()
  assert "| diffusion.schedule=linear |" in report and "| diffusion.schedule=cosine |" in report
  assert (root / "report.png").stat().st_size > 1000
  before = {n: (root / n / "metrics.jsonl").read_text() for n in names}
  again = _sweep_cli(["--config", SWEEP_EXPERIMENT, "--workdir", str(root), "--only", "seed-1",
                      "--sample_quality", "num_steps=4;grid=uniform,num_steps=8", "--quality_samples", "6"], tmp_path)
  out, _ = again.communicate(timeout=300)
  assert again.returncode == 0 and out.count("finished before, skipped") == 2 and "started" not in out, out
  assert {n: (root / n / "metrics.jsonl").read_text() for n in names} == before
  with open(root / "report.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["name"] for r in rows] == ["schedule-linear_seed-1", "schedule-cosine_seed-1"]
  for r in rows:  # entropy of 6 samples of L = 32 characters: in (0, ln 27]
    for spec in ("num_steps=4", "grid=uniform,num_steps=8"):
      assert 0 < float(r[f"entropy[{spec}]"]) <= np.log(27)


def test_killed_sweep_restarts_without_rerunning_finished_members_resumes_the_interrupted_one_and_records_failures(
    tmp_path):
  # lr = inf: the first update is NaN/Inf and that member's training stops with an error; the sweep goes on
  path = _experiment(tmp_path, "[{'train.num_steps': 8}, {'optim.lr': float('inf')}, {'train.num_steps': 200}]")
  root = tmp_path / "root"
  proc = _sweep_cli(["--config", path, "--workdir", str(root)], tmp_path)
  long_run = root / "num_steps-200"
  deadline = time.time() + 300
  while sweep_report.steps_done(sweep_report.read_metrics(long_run)) < 4:
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  interrupted_at = sweep_report.steps_done(sweep_report.read_metrics(long_run))
  assert proc.returncode == 3 and "num_steps-200: interrupted" in out and "rerun the same command" in out
  assert "lr-inf: FAILED (exit 1)" in out and 4 <= interrupted_at < 200
  record = json.loads((root / "_sweep" / "lr-inf.json").read_text())
  assert record["status"] == "failed" and record["exit_code"] == 1
  assert any("NaN/Inf" in line for line in record["log_tail"])
  first = (root / "num_steps-8" / "metrics.jsonl").read_text()
  proc = _sweep_cli(["--config", path, "--workdir", str(root)], tmp_path)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 1 and "1 member(s) failed: lr-inf" in out, out
  assert "num_steps-8: finished before, skipped" in out and "num_steps-200: done" in out
  assert (root / "num_steps-8" / "metrics.jsonl").read_text() == first
  log = (root / "_sweep" / "num_steps-200.log").read_text()
  saved = int(re.search(r"SIGTERM: saved checkpoint (\d+) and stopped", log).group(1))
  assert saved >= interrupted_at and f"resumed from {long_run}/checkpoints/{saved}" in log
  steps = [r["step"] for r in sweep_report.read_metrics(long_run) if "train/objective" in r]
  assert steps == sorted(set(steps)) and steps[-1] == 200  # continued, not restarted from step 1
  with open(root / "report.csv") as f:
    assert [r["status"] for r in csv.DictReader(f)] == ["done", "failed (exit 1)", "done"]


def _write_metrics(workdir, curve, num_steps):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for step, bpt in curve:
      f.write(json.dumps({"step": step, "train/objective": 1.0}) + "\n")
      f.write(json.dumps({"step": step, "eval/bits_per_token": bpt, "eval/bits_per_token_stderr": 0.01}) + "\n")
    if curve[-1][0] < num_steps:
      f.write('{"step": 99, "train/obj')  # a partly written line is skipped


def test_report_groups_seeds_and_marks_the_best_setting(tmp_path):
  sweep_list = sweep_spec.product(sweep_spec.axis("diffusion.schedule", ("linear", "cosine", "geometric")),
                                  sweep_spec.axis("seed", (0, 1)))
  members = [sweep_spec.Member(i, n, o) for i, (n, o) in enumerate(zip(sweep_spec.member_names(sweep_list),
                                                                      sweep_list))]
  curves = {"schedule-linear_seed-0": [(5, 3.0), (10, 2.5)], "schedule-linear_seed-1": [(5, 3.2), (10, 2.7)],
            "schedule-cosine_seed-0": [(5, 3.1), (10, 2.4)], "schedule-cosine_seed-1": [(5, 2.9), (10, 2.5)],
            "schedule-geometric_seed-0": [(5, 2.0)]}  # interrupted at step 5 of 10; seed 1 never started
  for name, curve in curves.items():
    _write_metrics(tmp_path / name, curve, 10)
  os.makedirs(tmp_path / "_sweep")  # a multi-host sweep's records, one per worker: the first one is read
  for host, wall in (("w1", 7.0), ("w0", 5.0)):
    (tmp_path / "_sweep" / f"schedule-linear_seed-0@{host}.json").write_text(json.dumps({"wall_s": wall}))
  rows = sweep_report.write(str(tmp_path), members, {m.name: 10 for m in members}, "t")
  assert [r["status"] for r in rows] == ["done"] * 4 + ["interrupted", "not started"]
  assert [r["wall_s"] for r in rows] == [5.0] + [None] * 5
  assert [r["bpt"] for r in rows] == [2.5, 2.7, 2.4, 2.5, 2.0, None]
  groups = sweep_report.group_by_setting(members, rows)
  assert [(g["setting"], g["n"], g["seeds"]) for g in groups] == [
      ("diffusion.schedule=linear", 2, 2), ("diffusion.schedule=cosine", 2, 2), ("diffusion.schedule=geometric", 1, 2)]
  np.testing.assert_allclose([g["mean"] for g in groups], [2.6, 2.45, 2.0], rtol=1e-12)
  np.testing.assert_allclose([g["std"] for g in groups[:2]], [np.sqrt(0.02), np.sqrt(0.005)], rtol=1e-12)
  assert groups[2]["std"] is None and [g["best"] for g in groups] == [False, False, True]
  report = (tmp_path / "report.md").read_text()
  assert "| diffusion.schedule=cosine | 2.4500 | 0.0707 | 2 / 2 |  |" in report
  assert "| diffusion.schedule=geometric | 2.0000 | - | 1 / 2 | **best** |" in report
  assert (tmp_path / "report.png").stat().st_size > 1000


def test_parallel_members_split_the_visible_gpus():
  env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "X": "1"}
  assert [sweep.slot_env(s, 2, env)["CUDA_VISIBLE_DEVICES"] for s in range(2)] == ["0,1", "2,3"]
  assert [sweep.slot_env(s, 4, env)["CUDA_VISIBLE_DEVICES"] for s in range(4)] == ["0", "1", "2", "3"]
  assert sweep.slot_env(1, 3, env) == env and sweep.slot_env(0, 1, env) == env  # no even split: unchanged
  assert "CUDA_VISIBLE_DEVICES" not in sweep.slot_env(1, 2, {"X": "1"})


def _stub(path, body: str) -> str:
  path.write_text("#!/bin/bash\n" + body)
  path.chmod(0o755)
  return str(path)


def test_slurm_array_task_trains_its_member(tmp_path):
  """srun stubbed (prints its command); PYTHON runs md4_jax.sweep for real and only echoes md4_jax.train."""
  _stub(tmp_path / "srun", 'while [[ "$1" == --* ]]; do shift; done\n"$@"\n')
  python = _stub(tmp_path / "python", f"""
if [[ "$2" == md4_jax.sweep ]]; then exec {sys.executable} "$@"; fi
printf "%s|" "$@"; echo
""")
  env = dict(_env(tmp_path), PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", PYTHON=python,
             SLURM_ARRAY_TASK_ID="2")
  command = ["bash", "launch/slurm.sbatch", "--sweep", "--config", SWEEP_EXPERIMENT, "--workdir", "/w",
             "--config.optim.lr=0.01"]
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-1] == (
      f"-m|md4_jax.train|--multihost|--config|{SWEEP_EXPERIMENT}|--workdir|/w/schedule-cosine_seed-0|"
      "--config.optim.lr=0.01|--config.diffusion.schedule=cosine|--config.seed=0|")
  env["SLURM_ARRAY_TASK_ID"] = "4"
  bad = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and "--member_args=4: the sweep has members 0..3" in bad.stderr
  del env["SLURM_ARRAY_TASK_ID"]
  bad = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and "sbatch --array" in bad.stderr


def test_tpu_pod_sweep_mode_runs_the_sweep_on_all_workers_then_the_report_on_worker_0(tmp_path):
  log = tmp_path / "gcloud.log"
  gcloud = _stub(tmp_path / "gcloud", f'echo "$*" >> {log}\n')
  env = dict(os.environ, GCLOUD=gcloud, PYTHON="python3")
  result = subprocess.run(["bash", "launch/tpu_pod.sh", "--sweep", "my-tpu", "zone-a", "--", "--config",
                           "experiments/kjv_tiny.py", "--workdir", "/mnt/a dir"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  calls = log.read_text().splitlines()
  assert len(calls) == 2
  assert calls[0].endswith("--worker=all --command=cd md4_jax && python3 -m md4_jax.sweep --multihost --no_report "
                           "--config experiments/kjv_tiny.py --workdir /mnt/a\\ dir ")
  assert calls[1].endswith("--worker=0 --command=cd md4_jax && python3 -m md4_jax.sweep --report_only "
                           "--config experiments/kjv_tiny.py --workdir /mnt/a\\ dir ")
