"""Evaluation CLI and library: Monte Carlo NELBO statistics, discrete T, exact 'ar' NLL, zero-shot table, bad input."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from md4_jax import data as data_lib
from md4_jax import evaluate, train
from md4_jax.evaluation import nelbo as evaluation
from md4_jax.training import experiment
from eval_fixtures import ar_config, save_initial_checkpoint
from train_configs import ROOT, tiny_config

LOG2_27 = math.log2(27)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny MD4 trained for 8 steps (checkpoints 4 and 8)."""
  workdir = str(tmp_path_factory.mktemp("md4"))
  train.train_and_evaluate(tiny_config(num_steps=8), workdir)
  return workdir


@pytest.fixture(scope="module")
def restored(trained):
  restored = experiment.restore_ema(tiny_config(num_steps=8), trained)
  return restored.exp, restored.params, restored.step


def test_mc_standard_error_falls_as_one_over_sqrt_k(restored):
  exp, params, step = restored
  assert step == 8
  many = evaluation.nelbo_stats(exp, params, num_mc_samples=16, discrete_steps=16)  # T = 16: bounded weights
  few = evaluation.NelboStats(many.nats[:, :2], many.num_tokens)  # the first 2 of the 16 draws
  assert many.nats.shape == (32, 16) and 3.0 < many.bits_per_token < 7.0 and many.stderr > 0
  ratio = many.mc_stderr / few.mc_stderr
  assert 0.2 < ratio < 0.55, ratio  # sqrt(2 / 16) = 0.35; identical draws would give 0 / 0
  assert abs(many.bits_per_token - few.bits_per_token) < 4 * few.mc_stderr
  assert math.isnan(evaluation.NelboStats(many.nats[:, :1], 32).mc_stderr)  # K = 1: not estimable


def test_whole_split_pads_the_last_batch(restored):
  exp, params, _ = restored
  eval_fn = evaluation.make_mc_eval_fn(exp, num_mc_samples=1, discrete_steps=0)
  first_two_batches = evaluation.per_example_nats(exp, eval_fn, params)  # train.eval_batches = 2 of 16
  whole = evaluation.per_example_nats(exp, eval_fn, params, whole_split=True)
  num_examples = sum(1 for _ in data_lib.make_dataset(exp.config.data, "validation", batch_size=1, seed=0))
  assert whole.shape == (num_examples, 1) and num_examples % 16  # a padded last batch, its padding dropped
  np.testing.assert_array_equal(whole[:32], first_two_batches)  # same batches, same keys
  assert np.all(np.isfinite(whole))


def test_nelbo_stats_units():
  bits = np.array([[1.0, 3.0], [2.0, 2.0], [4.0, 6.0]])  # bits per token of 2 draws for 3 examples
  stats = evaluation.NelboStats(bits * 4 * math.log(2.0), 4)  # nats per example of L = 4 tokens
  assert stats.bits_per_token == pytest.approx(3.0)
  assert stats.perplexity == pytest.approx(8.0)  # 2^3
  assert stats.stderr == pytest.approx(np.std([2.0, 2.0, 5.0], ddof=1) / math.sqrt(3))
  assert stats.mc_stderr == pytest.approx(math.sqrt((2.0 + 0.0 + 2.0) / 2) / 3)  # draw variances 2, 0, 2
  assert stats.summary()["nats_per_token"] == pytest.approx(3.0 * math.log(2.0))


def test_discrete_time_with_large_t_is_close_to_continuous(restored):
  exp, params, _ = restored
  continuous = evaluation.nelbo_stats(exp, params, num_mc_samples=4, discrete_steps=0)
  discrete = evaluation.nelbo_stats(exp, params, num_mc_samples=4, discrete_steps=10_000)
  # Same keys: t moves by at most 1/T, flipping about L * N * K / T = 0.4 of the 4096 masks.
  assert abs(discrete.bits_per_token - continuous.bits_per_token) < 0.02
  assert continuous.mc_stderr > 0.02  # the agreement is far inside the Monte Carlo error


def test_ar_model_gives_the_exact_nll(tmp_path):
  config = ar_config()
  save_initial_checkpoint(config, str(tmp_path))  # zero output head: p = 1/27 for every token
  result = evaluate.run(config, str(tmp_path), num_mc_samples=5)
  assert result["num_mc_samples"] == 1 and result["step"] == 0
  assert result["bits_per_token"] == pytest.approx(LOG2_27, rel=1e-6)
  assert result["perplexity"] == pytest.approx(27, rel=1e-6)
  assert result["bits_per_token_stderr"] == pytest.approx(0, abs=1e-6)
  assert result["bits_per_token_mc_stderr"] is None  # one draw: JSON null, '-' in the table
  assert "| 0.0000 | - |" in evaluate.markdown(result)
  assert "| validation | 32 | 4.7549 |" in evaluate.markdown(result) and "≤" not in evaluate.markdown(result)
  with pytest.raises(ValueError, match="discrete_steps=8"):
    evaluate.run(config, str(tmp_path), discrete_steps=8)


def test_zero_shot_table_with_missing_sets(tmp_path):
  config = ar_config(gpt2_vocab=True)
  save_initial_checkpoint(config, str(tmp_path / "run"))
  sets = tmp_path / "sets"
  sets.mkdir()
  text = "The quick brown fox jumps over the lazy dog while the cat watches from the window . " * 6
  with open(sets / "lambada.jsonl", "w") as f:
    for i in range(12):
      f.write(json.dumps({"text": f"{i} {text}"}) + "\n")
  result = evaluate.run(config, str(tmp_path / "run"), zero_shot_dir=str(sets))
  table = result["zero_shot"]
  assert list(table) == list(evaluate.ZERO_SHOT_SETS)
  assert table["lambada"]["perplexity"] == pytest.approx(50257, rel=1e-5)  # uniform over GPT-2's vocabulary
  lambada = data_lib.default_data_config("lambada")
  lambada.update(path=str(sets / "lambada.jsonl"), seq_len=32)
  num_blocks = sum(1 for _ in data_lib.make_dataset(lambada, "test", batch_size=1, seed=0))
  assert num_blocks % 8 and table["lambada"]["examples"] == num_blocks  # the whole set: last batch padded
  for name in ("wikitext2", "ptb", "wikitext103", "lm1b"):
    assert table[name] == {"missing": str(sets / f"{name}.jsonl")}
  text = evaluate.markdown(result)
  assert f"| ptb | | | | | missing: {sets / 'ptb.jsonl'} |" in text and "| lambada |" in text


def test_zero_shot_refuses_a_model_not_gpt2_tokenised(trained, tmp_path):
  with pytest.raises(ValueError, match=r"GPT-2 tokenised \(V = 50257\); this model has V = 27"):
    evaluate.run(tiny_config(num_steps=8), trained, zero_shot_dir=str(tmp_path))


def test_bad_input_raises_clear_errors(trained, tmp_path):
  config = tiny_config(num_steps=8)
  with pytest.raises(ValueError, match="no checkpoint directory"):
    evaluate.run(config, str(tmp_path))
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(ValueError, match="no checkpoint in"):
    evaluate.run(config, str(tmp_path))
  with pytest.raises(ValueError, match=r"no checkpoint of step 5 .* available steps: \[4, 8\]"):
    evaluate.run(config, trained, step=5)
  with pytest.raises(ValueError, match="belongs to another model config"):
    evaluate.run(_wider(), trained)
  with pytest.raises(ValueError, match="num_mc_samples must be >= 1"):
    evaluate.run(config, trained, num_mc_samples=0)
  with pytest.raises(ValueError, match="discrete_steps must be 0"):
    evaluate.run(config, trained, discrete_steps=-1)
  genmd4 = tiny_config(**{"diffusion.objective": "genmd4"})
  with pytest.raises(ValueError, match="'md4' only; this model is 'genmd4'"):
    evaluate.run(genmd4, trained, discrete_steps=100)


def _wider():
  config = tiny_config(num_steps=8)
  config.model.network.width = 64
  return config


def _cli(args):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "md4_jax.evaluate", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_prints_json_and_table_and_writes_output(trained, tmp_path):
  config_file = tmp_path / "tiny.py"
  config_file.write_text("from train_configs import tiny_config\n\n\ndef get_config():\n  return tiny_config(8)\n")
  output = tmp_path / "out" / "eval.md"
  proc = _cli(["--config", str(config_file), "--workdir", trained, "--num_mc_samples=2", "--step=4",
               "--config.train.eval_batches=1", f"--output={output}"])
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.splitlines()[0])
  assert result["step"] == 4 and result["examples"] == 16 and result["num_mc_samples"] == 2
  assert np.isfinite(result["bits_per_token"]) and np.isfinite(result["bits_per_token_mc_stderr"])
  assert "| validation | 16 |" in proc.stdout
  assert output.read_text() == proc.stdout
  bad = _cli(["--config", str(config_file), "--workdir", str(tmp_path / "nothing")])
  assert bad.returncode == 1 and "error: no checkpoint directory" in bad.stderr
  bad = _cli(["--config", str(config_file), "--workdir", trained, "--zero_shot"])
  assert bad.returncode == 1 and "--zero_shot needs --zero_shot_dir" in bad.stderr
