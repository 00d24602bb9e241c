"""md4_jax.convert / mdlm_weights: MDLM-family PyTorch checkpoints (HF folder, .safetensors, .bin, Lightning .ckpt)
become self-describing workdirs whose network gives the reference's log-probabilities; every refusal writes
nothing."""

import json
import os
import pickle

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax import convert
from md4_jax.training import experiment, run_config
from md4_jax.nn import mdlm_dit
import mdlm_reference

V_MODEL = 50258  # GPT-2 + mask, as the owt_mdlm experiment's tokenizer
ARCH = dict(vocab_rows=V_MODEL, width=16, num_blocks=2, cond_dim=8)  # default heads: 16 // 64 -> 1
safetensors_numpy = pytest.importorskip("safetensors.numpy")


@pytest.fixture(scope="module")
def state_dict():
  return mdlm_reference.random_state_dict(**ARCH)


def prefixed(state):
  return {"backbone." + k: v for k, v in state.items()}


def inputs(length: int):
  rng = np.random.default_rng(3)
  x = rng.integers(0, V_MODEL - 1, (2, length))
  x[rng.random(x.shape) < 0.5] = V_MODEL - 1  # masks
  t = np.array([0.3, 0.8])
  return x, t


def converted_log_probs(workdir, x, t):
  """The restored EMA network's log-probabilities (through the model, as the samplers see them), computed in
  float32 (the experiment's bfloat16 compute dtype is a runtime field)."""
  config = run_config.load(str(workdir))
  assert config.model.network.dtype == "bfloat16"
  config.model.network.dtype = "float32"
  restored = experiment.restore_ema(config, str(workdir))
  model = nnx.merge(restored.exp.graphdef, restored.params)
  return np.asarray(model.log_probs(jnp.asarray(x, jnp.int32), jnp.asarray(t, jnp.float32))), config


def sigma_of(t):
  return -np.log1p(-(1 - mdlm_dit.NOISE_EPS) * t)


def test_safetensors_round_trip_matches_the_float64_reference(tmp_path, state_dict):
  path = tmp_path / "model.safetensors"
  safetensors_numpy.save_file(state_dict, str(path))
  workdir = tmp_path / "w"
  assert convert.main(["prog", f"--input={path}", f"--output={workdir}"]) == 0
  x, t = inputs(10)
  ours, config = converted_log_probs(workdir, x, t)
  assert config.model.kind == "mdlm_dit" and config.model.network.num_heads == 1
  assert not config.model.network.time_conditioning
  reference = mdlm_reference.log_probs(state_dict, x, np.zeros(2), n_heads=1)  # not time-conditioned: sigma = 0
  np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)
  assert np.all(ours[x != V_MODEL - 1].argmax(-1) == x[x != V_MODEL - 1])  # SUBS carry-over


def test_hf_folder_with_heads_and_time_conditioning_scanned(tmp_path, state_dict):
  """config.json's n_heads / time_conditioning / model_length are used; the blocks can be written stacked."""
  folder = tmp_path / "hf"
  folder.mkdir()
  safetensors_numpy.save_file(prefixed(state_dict), str(folder / "model.safetensors"))
  (folder / "config.json").write_text(json.dumps(
      {"vocab_size": V_MODEL, "model_length": 12, "hidden_dim": 16, "cond_dim": 8, "n_blocks": 2, "n_heads": 4,
       "dropout": 0.1, "time_conditioning": True}))
  workdir = tmp_path / "w"
  assert convert.main(["prog", f"--input={folder}", f"--output={workdir}", "--scan_layers"]) == 0
  x, t = inputs(12)
  ours, config = converted_log_probs(workdir, x, t)
  assert (config.data.seq_len, config.model.network.num_heads, config.model.network.scan_layers) == (12, 4, True)
  reference = mdlm_reference.log_probs(state_dict, x, sigma_of(t), n_heads=4)
  np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)
  other_t = mdlm_reference.log_probs(state_dict, x, sigma_of(t[::-1]), n_heads=4)
  assert np.abs(other_t - reference).max() > 1e-3  # the time input matters


def test_bin_state_dict_round_trips(tmp_path, state_dict):
  torch = pytest.importorskip("torch")
  path = tmp_path / "pytorch_model.bin"
  torch.save({k: torch.from_numpy(v) for k, v in prefixed(state_dict).items()}, str(path))
  workdir = tmp_path / "w"
  assert convert.main(["prog", f"--input={path}", f"--output={workdir}"]) == 0
  restored = experiment.restore_ema(run_config.load(str(workdir)), str(workdir))
  kernel = np.asarray(restored.params["network"]["blocks"][1]["attn_qkv"]["kernel"])
  np.testing.assert_array_equal(kernel, state_dict["blocks.1.attn_qkv.weight"].T)


class Hyperparameters:
  """A class the checkpoint's pickle names but the converter cannot import (as Hydra / Lightning objects)."""

  def __init__(self):
    self.n_heads = 1


def lightning_checkpoint(torch, state, ema_shift=None):
  ckpt = {"state_dict": {**{k: torch.from_numpy(v) for k, v in prefixed(state).items()},
                         "noise.sigma_min": torch.tensor(1e-3)},
          "hyper_parameters": {"config": Hyperparameters()}, "global_step": 7}
  if ema_shift is not None:
    ckpt["ema"] = {"decay": 0.9999, "shadow_params": [torch.from_numpy(v + ema_shift) for v in state.values()]}
  return ckpt


@pytest.mark.parametrize("with_ema", [True, False])
def test_lightning_ckpt_takes_the_ema_weights_when_present(tmp_path, state_dict, capsys, monkeypatch, with_ema):
  torch = pytest.importorskip("torch")
  path = tmp_path / "mdlm.ckpt"
  torch.save(lightning_checkpoint(torch, state_dict, 0.5 if with_ema else None), str(path))
  monkeypatch.delattr(Hyperparameters, "__init__")  # unimportable classes are not run, only stood in for
  workdir = tmp_path / "w"
  assert convert.main(["prog", f"--input={path}", f"--output={workdir}"]) == 0
  said = capsys.readouterr().out
  assert ("took the EMA weights" in said) == with_ema and ("no EMA weights" in said) != with_ema
  restored = experiment.restore_ema(run_config.load(str(workdir)), str(workdir))
  table = np.asarray(restored.params["network"]["vocab_embed"]["embedding"])
  np.testing.assert_array_equal(table, state_dict["vocab_embed.embedding"] + (0.5 if with_ema else 0.0))


def refused(tmp_path, capsys, path, *extra):
  """Runs the converter expecting a refusal: exit 1, one line on stderr, no workdir written."""
  workdir = tmp_path / "refused"
  assert convert.main(["prog", f"--input={path}", f"--output={workdir}", *extra]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err
  assert not workdir.exists()
  return err


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s.pop("blocks.1.norm2.weight"), r"missing key 'blocks.1.norm2.weight' (expected shape (16,))"),
    (lambda s: s.update({"blocks.0.extra.weight": np.zeros(3, np.float32)}),
     "unexpected key 'blocks.0.extra.weight' (shape (3,))"),
    (lambda s: s.update({"blocks.1.attn_out.weight": np.zeros((16, 8), np.float32)}),
     "key 'blocks.1.attn_out.weight' has shape (16, 8); expected (16, 16)"),
    (lambda s: s.update({"vocab_embed.embedding": np.zeros((1000, 16), np.float32),
                         "output_layer.linear.weight": np.zeros((1000, 16), np.float32),
                         "output_layer.linear.bias": np.zeros(1000, np.float32)}),
     "checkpoint vocabulary 1000 (mask included) does not match the tokenizer of data 'owt': V = 50257 + mask"),
])
def test_bad_checkpoints_are_refused_naming_the_key_and_shapes(tmp_path, capsys, state_dict, edit, expected):
  state = dict(state_dict)
  edit(state)
  path = tmp_path / "bad.safetensors"
  safetensors_numpy.save_file(state, str(path))
  assert expected in refused(tmp_path, capsys, path)


def test_files_that_are_not_checkpoints_are_refused(tmp_path, capsys, monkeypatch):
  garbage = tmp_path / "model.safetensors"
  garbage.write_bytes(b"\x07not a safetensors header" * 4)
  assert "is not a readable safetensors file" in refused(tmp_path, capsys, garbage)
  text = tmp_path / "notes.txt"
  text.write_text("hello")
  assert "unknown checkpoint file type '.txt'" in refused(tmp_path, capsys, text)
  assert "no checkpoint at" in refused(tmp_path, capsys, tmp_path / "absent.ckpt")
  empty_folder = tmp_path / "folder"
  empty_folder.mkdir()
  assert "without config.json" in refused(tmp_path, capsys, empty_folder)
  monkeypatch.setitem(__import__("sys").modules, "torch", None)  # torch absent: .bin / .ckpt explain the extra
  binary = tmp_path / "model.bin"
  binary.write_bytes(b"junk")
  assert 'pip install -e ".[torch]"' in refused(tmp_path, capsys, binary)


def test_a_bin_that_is_not_a_torch_pickle_is_refused(tmp_path, capsys):
  pytest.importorskip("torch")
  binary = tmp_path / "model.bin"
  binary.write_bytes(pickle.dumps([1, 2, 3])[:5])
  assert "is not a PyTorch checkpoint" in refused(tmp_path, capsys, binary)
  ckpt = tmp_path / "model.ckpt"
  ckpt.write_bytes(b"junk")
  assert "is not a PyTorch checkpoint" in refused(tmp_path, capsys, ckpt)


def test_an_existing_workdir_is_left_intact(tmp_path, capsys, state_dict):
  path = tmp_path / "model.safetensors"
  safetensors_numpy.save_file(state_dict, str(path))
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "config.json").write_text("{}")
  assert convert.main(["prog", f"--input={path}", f"--output={workdir}"]) == 1
  assert "exists and is not an empty folder" in capsys.readouterr().err
  assert os.listdir(workdir) == ["config.json"] and (workdir / "config.json").read_text() == "{}"
  assert convert.main(["prog", f"--input={path}", f"--output={tmp_path / 'x'}", "--source=sedd"]) == 1
  assert "unknown --source 'sedd'; valid: mdlm" in capsys.readouterr().err
  assert convert.main(["prog", f"--input={path}"]) == 2  # usage: --output missing


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory, state_dict):
  """A converted toy HF folder (L = 16, 2 heads) as a workdir."""
  base = tmp_path_factory.mktemp("toy_mdlm")
  folder = base / "hf"
  folder.mkdir()
  safetensors_numpy.save_file(prefixed(state_dict), str(folder / "model.safetensors"))
  (folder / "config.json").write_text(json.dumps({"vocab_size": V_MODEL, "model_length": 16, "n_heads": 2,
                                                  "time_conditioning": False}))
  convert.convert("mdlm", str(folder), str(base / "w"))
  return base / "w"


def sampled_tokens(output) -> np.ndarray:
  rows = [json.loads(line) for line in open(f"{output}.jsonl")]
  return np.array([row["tokens"] for row in rows])


def test_converted_toy_model_samples_through_both_binaries(toy_workdir, tmp_path):
  """sample_ancestral / sample_remdm on the converted workdir, --config an experiment file returning its
  config.json (until the binaries read WORKDIR/config.json themselves)."""
  from md4_jax import sample_ancestral, sample_remdm
  experiment_file = tmp_path / "converted.py"
  experiment_file.write_text("import json\nimport ml_collections\n\n\ndef get_config():\n  return "
                             f"ml_collections.ConfigDict(json.load(open({str(toy_workdir / 'config.json')!r})))\n")
  for binary in (sample_ancestral, sample_remdm):
    output = tmp_path / binary.__name__.rsplit(".", 1)[-1]
    assert binary.main(["prog", f"--config={experiment_file}", f"--workdir={toy_workdir}", "--num_samples=2",
                        f"--output={output}", "--config.sampler.num_steps=32",
                        "--config.model.network.dtype=float32"]) == 0  # bfloat16 matmuls are slow on a CPU
    tokens = sampled_tokens(output)
    assert tokens.shape == (2, 16) and tokens.min() >= 0 and tokens.max() < V_MODEL - 1


def test_converted_toy_model_samples_through_both_binaries_with_no_config(toy_workdir, tmp_path):
  from md4_jax import sample_ancestral, sample_remdm
  for binary in (sample_ancestral, sample_remdm):
    output = tmp_path / binary.__name__.rsplit(".", 1)[-1]
    assert binary.main(["prog", f"--workdir={toy_workdir}", "--num_samples=2", f"--output={output}"]) == 0
    tokens = sampled_tokens(output)
    assert tokens.shape == (2, 16) and tokens.min() >= 0 and tokens.max() < V_MODEL - 1
