"""The one command-line convention (md4_jax.cli) and self-describing workdirs (md4_jax.training.run_config): a trained
workdir is sampled, evaluated and resumed with --workdir alone; a contradicting config is refused with the
difference; an unknown config key ends every binary with one line naming it and the closest valid one."""
import json
import os

import numpy as np
import pytest
from flax import nnx

from md4_jax import convert, evaluate, generate, molecules, sample_ancestral, sample_remdm, scaling_report, sweep, train
from md4_jax.training import experiment, run_config
from test_sample_binaries import TINY
from train_configs import tiny_config

BINARIES = {"train": train, "evaluate": evaluate, "sample_ancestral": sample_ancestral,
            "sample_remdm": sample_remdm, "scaling_report": scaling_report, "molecules": molecules,
            "convert": convert, "sweep": sweep}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A fresh run of tests/tiny_experiment.py (2 steps), as `python -m md4_jax.train` leaves it."""
  workdir = tmp_path_factory.mktemp("run")
  assert train.main(["prog", f"--config={TINY}", f"--workdir={workdir}", "--config.train.num_steps=2",
                     "--config.train.checkpoint_every=2"]) == 0
  return workdir


@pytest.mark.parametrize("name", sorted(BINARIES))
def test_an_unknown_config_key_is_one_line_with_the_closest_valid_one(name, tmp_path, capsys):
  code = BINARIES[name].main(["prog", f"--config={TINY}", f"--workdir={tmp_path}", "--config.sampler.nmu_steps=3"])
  assert code == 2
  assert capsys.readouterr().err == ("usage error: unknown config key 'sampler.nmu_steps'; the closest valid one is "
                                     "'sampler.num_steps'\n")
  assert not os.listdir(tmp_path)


def test_training_writes_the_resolved_config_at_its_first_start(run):
  expected = tiny_config()
  expected.train.update(num_steps=2, checkpoint_every=2)
  assert run_config.load(str(run)).to_dict() == json.loads(json.dumps(expected.to_dict()))
  assert sorted(name for name in os.listdir(run) if "config" in name) == ["config.json"]  # no temporary file


def test_sample_and_evaluate_need_only_the_workdir(run, capsys):
  assert sample_remdm.main(["prog", f"--workdir={run}", "--num_samples=2", "--config.sampler.num_steps=4"]) == 0
  assert (run / "samples" / "remdm-loop_step2_seed0.txt").read_text().count("\n") == 2
  assert "remdm-loop: 2 samples from checkpoint 2" in capsys.readouterr().out
  assert evaluate.main(["prog", f"--workdir={run}", "--config.train.eval_batches=1"]) == 0
  result = json.loads(capsys.readouterr().out.splitlines()[0])
  assert result["step"] == 2 and result["examples"] == 16
  assert sample_ancestral.main(["prog", f"--config={TINY}", f"--workdir={run}", "--num_samples=2"]) == 0


@pytest.mark.parametrize("name", ["sample_remdm", "evaluate", "train"])
def test_a_contradicting_model_is_refused_with_the_difference(run, name, capsys):
  before = sorted(os.listdir(run / "checkpoints"))
  code = BINARIES[name].main(["prog", f"--workdir={run}", "--config.model.network.width=64"])
  err = capsys.readouterr().err
  assert code == 1 and "config.json describes another model than this config" in err
  assert "model.network.width: saved 32 vs config 64" in err
  assert sorted(os.listdir(run / "checkpoints")) == before


def test_training_resumes_from_the_workdir_alone(run):
  assert train.main(["prog", f"--workdir={run}", "--config.train.num_steps=4",
                     "--config.train.checkpoint_every=2"]) == 0
  assert sorted(int(s) for s in os.listdir(run / "checkpoints") if s.isdigit()) == [2, 4]
  assert run_config.load(str(run)).train.num_steps == 2  # the config of the first start is kept


def test_load_denoiser_is_the_runs_ema_denoiser(run):
  denoise_fn = generate.load_denoiser(str(run))
  config = tiny_config()
  config.mesh.data = -1
  restored = experiment.restore_ema(config, str(run))
  z_t = np.full((8, 32), 27, np.int32)
  z_t[:, ::3] = np.arange(8)[:, None]
  t = np.linspace(0.1, 0.9, 8).astype(np.float32)
  log_probs = np.asarray(denoise_fn(z_t, t))
  assert log_probs.shape == (8, 32, 27) and log_probs.dtype == np.float32
  expected = nnx.merge(restored.exp.graphdef, restored.params).log_probs(z_t, t)
  np.testing.assert_array_equal(log_probs, np.asarray(expected))
  np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)


def test_a_workdir_without_config_needs_config(tmp_path, capsys):
  assert sample_remdm.main(["prog", f"--workdir={tmp_path}"]) == 2
  assert "missing --config experiments/<name>.py" in capsys.readouterr().err
