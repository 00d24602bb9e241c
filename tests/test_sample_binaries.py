"""Sampling binaries (sample_lib, sample_ancestral, sample_remdm): config resolution, EMA-only restore onto any device
count, prompts, outputs, bad input."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from md4_jax.training import checkpoint, config_base, experiment, train_state
from md4_jax import generate, sample_ancestral, sample_lib, sample_remdm, sampling
from md4_jax.data import dataset_info, default_data_config
from md4_jax.data import text_corpus
from md4_jax.model import make_model
from train_configs import ROOT, load_experiment, tiny_config

TINY = os.path.join(ROOT, "tests", "tiny_experiment.py")  # tiny_config() as an experiment file
STEP = 3


def save_checkpoint(workdir, config, mesh=(2, 4), ema_shift=0.05):
  """A checkpoint as the training loop writes it, from a (data, fsdp) mesh of 8 devices (parameters split over
  fsdp); EMA = params + ema_shift, so restoring the wrong tree shows. Returns the saved state."""
  config = config.copy_and_resolve_references()
  config.mesh.data, config.mesh.fsdp = mesh
  exp = experiment.build(config)
  state = train_state.create(initial_params(config), exp.tx, config.seed)  # eager: no init program to compile
  state = jax.device_put(state.replace(ema_params=jax.tree.map(lambda p: p + ema_shift, state.params)),
                         exp.state_sharding)
  manager = checkpoint.make_manager(str(workdir), config.train)
  checkpoint.save(manager, STEP, state, {"position": 0}, checkpoint.fingerprint(config))
  manager.wait_until_finished()
  manager.close()
  return state


def initial_params(config) -> dict:
  """The model's initial parameters (deterministic in config.seed), a pure dict of arrays."""
  model = make_model(config, dataset_info(config.data), config.seed)
  return nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])


def cached_checkpoint(tmp_path_factory, name, config):
  """One checkpoint per test session, shared by the test modules that need it."""
  workdir = tmp_path_factory.getbasetemp() / name
  if not (workdir / "checkpoints" / str(STEP)).exists():
    save_checkpoint(workdir, config)
  return workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return cached_checkpoint(tmp_path_factory, "sample_tiny", tiny_config())


def resolve_config(path, overrides, sampler):
  """What a sampling binary makes of --config=path and --config.a.b=v overrides (locked, sampler checked)."""
  config = sample_lib.prepare(config_base.load_experiment(path), sampler)
  config.update_from_flattened_dict(overrides)
  config.lock()
  sampling.validate_config(config.sampler)
  return config


def tiny_args(workdir, *extra):
  return ["prog", f"--config={TINY}", f"--workdir={workdir}", *extra]


def test_encode_round_trips_through_decode():
  info = dataset_info(default_data_config("chars"))
  ids = info.encode("Hello,  World!")
  assert ids.dtype == np.int32 and info.decode(ids) == "hello world "
  np.testing.assert_array_equal(ids, text_corpus.normalize_bytes(b"Hello,  World!"))
  pytest.importorskip("tiktoken")
  owt = dataset_info(default_data_config("owt"))
  np.testing.assert_array_equal(owt.encode("Hello world"), [15496, 995])
  assert owt.decode(owt.encode("Hello world")) == "Hello world"


def test_remdm_binary_defaults_then_overrides():
  """sample_remdm: default_config('remdm') (the experiment's schedule / eps kept), then command-line overrides;
  sample_ancestral: the experiment's own sampler; both spread over every device."""
  demo = os.path.join(ROOT, "experiments", "demo.py")
  remdm = resolve_config(demo, {"sampler.remdm.eta": 0.05, "sampler.num_steps": 32}, "remdm")
  expected = sampling.default_config("remdm")
  expected.remdm.eta, expected.num_steps = 0.05, 32
  assert remdm.sampler.to_dict() == expected.to_dict()
  assert (remdm.mesh.data, remdm.mesh.fsdp) == (-1, 1) and remdm.is_locked
  ancestral = resolve_config(demo, {"sampler.top_p": 0.9}, "ancestral")
  own = load_experiment("demo").sampler  # demo.py's own sampler, with the override applied
  assert ancestral.sampler.name == "ancestral" and ancestral.sampler.num_steps == own.num_steps
  assert ancestral.sampler.top_p == 0.9 and ancestral.sampler.cache == own.cache
  assert ancestral.sampler.grid == "cosine" and ancestral.sampler.top_p == 0.9
  # an override of the name applies to the binary's default, not to the experiment's sampler
  named = resolve_config(demo, {"sampler.name": "remdm"}, "ancestral")
  assert named.sampler.name == "remdm" and named.sampler.num_steps == own.num_steps and named.sampler.grid == "cosine"
  cosine = resolve_config(os.path.join(ROOT, "experiments", "imagenet64.py"), {}, "remdm")
  assert (cosine.sampler.schedule, cosine.sampler.grid, cosine.sampler.num_steps) == ("cosine", "uniform", 1024)
  with pytest.raises(ValueError, match="remdm.eta"):
    resolve_config(demo, {"sampler.remdm.eta": 1.5}, "remdm")


def test_ema_restored_alone_on_one_and_eight_devices_gives_the_same_samples(workdir):
  """A checkpoint written from a 2 x 4 mesh restores (EMA only) onto 1 device and onto 8; the samples agree."""
  expected = [np.asarray(p) + 0.05 for p in jax.tree.leaves(initial_params(tiny_config()))]
  z_init = sample_lib.z_init_from_prompts(None, dataset_info(tiny_config().data), 8)
  results = []
  for data in (1, -1):
    config = tiny_config(**{"mesh.data": data})
    restored = experiment.restore_ema(config, str(workdir))
    assert restored.step == STEP and restored.exp.mesh.size == (1 if data == 1 else 8)
    leaves = jax.tree.leaves(restored.params)
    assert all(leaf.sharding.mesh.size == restored.exp.mesh.size for leaf in leaves)
    for got, want in zip(leaves, expected):
      np.testing.assert_array_equal(np.asarray(got), want)
    tokens, stats = generate.generate(restored.exp.graphdef, restored.params, config.sampler, z_init,
                                      jax.random.key(1), mesh=restored.exp.mesh, batch_size=8)
    assert tokens.shape == (8, 32) and 0 < stats["nfe"] <= config.sampler.num_steps + 1
    assert tokens.min() >= 0 and tokens.max() < 27
    results.append(tokens)
  np.testing.assert_array_equal(results[0], results[1])


def test_ancestral_cli_continues_prefixes(workdir, tmp_path):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("The cat\nA dog, then\n")
  out = tmp_path / "out" / "s"
  code = sample_ancestral.main(tiny_args(workdir, "--num_samples=5", "--batch_size=8", "--seed=3",
                                         f"--prefix_file={prompts}", f"--output={out}"))
  assert code == 0
  lines = (tmp_path / "out" / "s.txt").read_text().splitlines()
  records = [json.loads(line) for line in (tmp_path / "out" / "s.jsonl").read_text().splitlines()]
  assert len(lines) == 5 and [r["index"] for r in records] == list(range(5))
  for i, (line, record) in enumerate(zip(lines, records)):
    assert line == record["text"] and len(line) == 32 and set(line) <= set(text_corpus.ALPHABET)
    assert line.startswith(["the cat", "a dog then"][i % 2])
    np.testing.assert_array_equal(text_corpus.encode_chars(line), record["tokens"])
  assert sorted(os.listdir(tmp_path / "out")) == ["s.jsonl", "s.txt"]  # no temporary files left


def test_remdm_cli_fills_infill_positions_with_its_own_default(workdir, tmp_path):
  row = [-1] * 32
  row[0:3], row[20] = [0, 1, 2], 27  # 'abc', one mask given as the mask id itself
  fixed = {0: 0, 1: 1, 2: 2}
  infill = tmp_path / "infill.jsonl"
  infill.write_text(json.dumps(row) + "\n")
  code = sample_remdm.main(tiny_args(workdir, "--num_samples=3", "--config.sampler.num_steps=8",
                                     f"--infill_file={infill}"))
  assert code == 0
  path = workdir / "samples" / f"remdm-loop_step{STEP}_seed0.jsonl"  # the default name shows the sampler
  records = [json.loads(line) for line in path.read_text().splitlines()]
  assert len(records) == 3
  for record in records:
    assert all(record["tokens"][k] == v for k, v in fixed.items()) and max(record["tokens"]) < 27


@pytest.mark.parametrize("extra, message", [
    (["--config.sampler.remdm.strategy=sideways"], "remdm.strategy = 'sideways' is not valid"),
    (["--prefix_file={long}"], "more than the sequence length L=32"),
    (["--infill_file={bad_token}"], "token id 28 is outside the vocabulary"),
    (["--infill_file={short}"], "need 32 integer token ids"),
    (["--label=3"], "label=3 is not a class of this model; valid: none"),
    (["--batch_size=12"], "batch_size=12 must be a positive multiple of the 8 devices"),
    (["--step=99"], "no checkpoint of step 99"),
    (["--config.model.network.width=64"], "belongs to another model config"),
])
def test_bad_input_fails_clearly_and_writes_nothing(workdir, tmp_path, capsys, extra, message):
  files = {"long": "x" * 33 + "\n", "bad_token": json.dumps([28] * 32), "short": json.dumps([1, 2])}
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  extra = [e.format(**{name: tmp_path / name for name in files}) for e in extra]
  out = tmp_path / "out" / "s"
  assert sample_remdm.main(tiny_args(workdir, f"--output={out}", *extra)) == 1
  assert message in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_usage_errors_and_missing_checkpoints(tmp_path, capsys):
  assert sample_ancestral.main(["prog", f"--config={TINY}", f"--workdir={tmp_path}"]) == 1
  assert "holds no training run" in capsys.readouterr().err
  (tmp_path / "checkpoints").mkdir()
  assert sample_ancestral.main(["prog", f"--config={TINY}", f"--workdir={tmp_path}"]) == 1
  assert "no checkpoint in" in capsys.readouterr().err
  assert sample_ancestral.main(tiny_args(tmp_path, "--config.sampler.nmu_steps=3")) == 2
  assert capsys.readouterr().err == ("usage error: unknown config key 'sampler.nmu_steps'; the closest valid one is "
                                     "'sampler.num_steps'\n")
  assert sample_ancestral.main(["prog", f"--config={TINY}"]) == 2
  assert "missing --workdir" in capsys.readouterr().err
  assert sample_ancestral.main(["prog", "--help"]) == 0
  assert "--num_samples" in capsys.readouterr().out
  assert not os.listdir(tmp_path / "checkpoints")


def test_image_samples_are_a_png_grid(tmp_path):
  info = dataset_info(default_data_config("digits"))
  tokens = np.random.default_rng(0).integers(0, info.vocab_size, (5,) + info.data_shape)
  png, jsonl = generate.write_samples(str(tmp_path / "grid"), tokens, info)
  grid = np.asarray(Image.open(png))
  images = np.asarray(info.decode(tokens))[..., 0].repeat(4, axis=1).repeat(4, axis=2)  # 8 px -> 32 px
  assert grid.shape == (2 * 33 + 1, 3 * 33 + 1)  # 3 columns, 2 rows, 1-px lines
  for i in range(5):
    r, c = divmod(i, 3)
    np.testing.assert_array_equal(grid[1 + 33 * r:33 * (r + 1), 1 + 33 * c:33 * (c + 1)], images[i])
  assert grid[1 + 33:, 1 + 66:].max() == 0  # the sixth cell is empty
  records = [json.loads(line) for line in open(jsonl)]
  np.testing.assert_array_equal([r["tokens"] for r in records], tokens)


def test_console_entry_point_exits_non_zero():
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "md4_jax.sample_remdm", f"--config={TINY}", "--workdir=/nonexistent"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and "holds no training run" in proc.stderr, proc.stderr
