"""The training loop: learning, device-count invariance, bitwise resume, SIGTERM, accumulation, bad input."""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from md4_jax import data as data_lib
from md4_jax.training import checkpoint, experiment, optim
from md4_jax import train
from md4_jax.training import train_state as train_state_lib
from md4_jax.model import make_model
from block_layout import stack_blocks
from train_configs import ROOT, tiny_config


def saved_state(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  manager.close()
  return state


def checkpoint_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def test_loss_decreases_and_samples_are_written(tmp_path):
  config = tiny_config(num_steps=60, **{"train.log_every": 20, "train.sample_every": 60,
                                        "train.eval_every": 60, "optim.lr": 3e-3, "train.checkpoint_every": 20})
  train.train_and_evaluate(config, str(tmp_path))
  lines = [eval(l.replace("NaN", "float('nan')")) for l in open(tmp_path / "metrics.jsonl")]
  losses = [l["train/nelbo"] for l in lines if "train/nelbo" in l]
  assert losses[-1] < 0.9 * losses[0], losses  # means over 20 steps each
  assert any("eval/bits_per_token" in l for l in lines)
  samples = open(tmp_path / "samples" / "step_00000060.txt").read().splitlines()
  assert len(samples) == 2 and all(len(s) == 32 and set(s) <= set("abcdefghijklmnopqrstuvwxyz ") for s in samples)
  assert checkpoint_steps(str(tmp_path)) == [20, 40, 60]


def test_one_and_eight_devices_give_the_same_loss(tmp_path):
  """1 device, 8 data-parallel devices and 2 x 4 (data x fsdp) agree to float tolerance."""
  results = {}
  for data, fsdp in [(1, 1), (8, 1), (2, 4)]:
    config = tiny_config(num_steps=6, **{"mesh.data": data, "mesh.fsdp": fsdp, "train.eval_every": 6,
                                         "train.checkpoint_every": 6})
    results[data, fsdp] = train.train_and_evaluate(config, str(tmp_path / f"{data}x{fsdp}"))
  one = jax.tree.leaves(saved_state(str(tmp_path / "1x1"), 6)["params"])
  for mesh in [(8, 1), (2, 4)]:
    for key in ("train/objective", "train/grad_norm", "eval/bits_per_token"):
      np.testing.assert_allclose(results[mesh][key], results[1, 1][key], rtol=2e-5)
    many = jax.tree.leaves(saved_state(str(tmp_path / f"{mesh[0]}x{mesh[1]}"), 6)["params"])
    for a, b in zip(one, many):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_remat_trains_like_no_remat(tmp_path):
  """model.network.remat=True (jax.checkpoint per block) inside the real train step: same losses and parameters,
  with grad accumulation (the scan over microbatches) and dropout on (which changes the loss)."""
  results = {}
  for remat, dropout in ((False, 0.1), (True, 0.1), (False, 0.0)):
    config = tiny_config(num_steps=4, **{"train.grad_accum_steps": 2, "train.checkpoint_every": 4})
    config.model.network.update(remat=remat, dropout=dropout)
    results[remat, dropout] = train.train_and_evaluate(config, str(tmp_path / f"{remat}{dropout}"))
  np.testing.assert_allclose(results[True, 0.1]["train/objective"], results[False, 0.1]["train/objective"],
                             rtol=1e-5)
  assert abs(results[False, 0.0]["train/objective"] / results[False, 0.1]["train/objective"] - 1) > 1e-4  # dropout on
  for a, b in zip(jax.tree.leaves(saved_state(str(tmp_path / "True0.1"), 4)["params"]),
                  jax.tree.leaves(saved_state(str(tmp_path / "False0.1"), 4)["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_scan_layers_trains_like_unrolled_blocks():
  """model.network.scan_layers=True inside the real train step, from the unrolled model's (perturbed) parameters
  stacked: the same losses and parameters, with weight decay (on matrices only: a stacked bias has rank 2 but is
  not decayed), dropout and gradient accumulation (the scan over layers inside the scan over microbatches)."""
  exps = {}
  for scan in (False, True):
    config = tiny_config(num_steps=3, **{"train.grad_accum_steps": 2, "optim.weight_decay": 10.0,
                                         "optim.warmup_steps": 0})
    config.model.network.update(num_layers=2, dropout=0.1, scan_layers=scan)
    exps[scan] = experiment.build(config)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(np.float32),
                        jax.tree.map(np.asarray, exps[False].init_state().params))
  layouts = {False: params, True: stack_blocks(params)}
  batch = {"x": rng.integers(0, 27, (16, 32))}
  results = {}
  for scan, exp in exps.items():
    state = jax.device_put(train_state_lib.create(layouts[scan], exp.tx, 0), exp.state_sharding)
    step_fn = train.jit_train_step(exp)
    objectives = []
    for _ in range(3):
      state, metrics = step_fn(state, exp.global_batch(batch))
      objectives.append(float(metrics["objective"]))
    results[scan] = objectives, state.params
  np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-5)
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), results[False][1], params)
  assert min(jax.tree.leaves(moved)) > 1e-3  # every parameter moved, biases included
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               results[True][1], stack_blocks(jax.tree.map(np.asarray, results[False][1])))


def test_resumed_run_is_bitwise_identical(tmp_path):
  """A run interrupted after its step-4 checkpoint and resumed equals an uninterrupted one, bit for bit."""
  config = tiny_config(num_steps=8)
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "8")  # "crashed" between steps 4 and 8
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  a, b = saved_state(str(tmp_path / "straight"), 8), saved_state(str(tmp_path / "resumed"), 8)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def _run_cli(args, **kwargs):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-m", "md4_jax.train", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  proc = _run_cli(["--config", "experiments/demo.py", "--workdir", str(tmp_path),
                   "--config.train.num_steps=100000", "--config.train.checkpoint_every=0",
                   "--config.train.eval_every=0", "--config.train.sample_every=0",
                   "--config.train.log_every=1", "--config.train.batch_size=8"])
  output = []
  for line in proc.stdout:
    output.append(line)
    if line.startswith("step 3/"):
      proc.send_signal(signal.SIGTERM)
      break
  rest, _ = proc.communicate(timeout=120)
  output = "".join(output) + rest
  assert proc.returncode == 0, output
  assert "SIGTERM: saved checkpoint" in output
  steps = checkpoint_steps(str(tmp_path))
  assert len(steps) == 1 and 3 <= steps[0] < 100000


def test_genmd4_learns_its_exponents(tmp_path):
  config = tiny_config(num_steps=30, **{"optim.lr": 1e-2, "train.log_every": 10})
  config.diffusion.objective = "genmd4"
  metrics = train.train_and_evaluate(config, str(tmp_path))
  w = jax.nn.softplus(saved_state(str(tmp_path), 30)["params"]["w_raw"])
  assert np.isfinite(metrics["train/nelbo"])
  assert np.ptp(w) > 0.05, w  # the 27 exponents moved apart from their common start 1.0
  assert metrics["train/nelbo"] != metrics["train/objective"]  # reported NELBO, not the surrogate


def test_gradient_accumulation_averages_microbatches_with_fresh_keys():
  config = tiny_config()
  info = data_lib.dataset_info(config.data)
  graphdef, params = nnx.split(make_model(config, info, 0), nnx.Param)
  tx = optim.make_optimizer(config.optim, 10)
  state = train_state_lib.create(nnx.to_pure_dict(params), tx, seed=0)
  batch = next(data_lib.make_dataset(config.data, "train", batch_size=16, seed=0))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  step = lambda k: jax.jit(functools.partial(train.train_step, graphdef=graphdef, tx=tx, ema_decay=0.9,
                                             grad_accum_steps=k))(state, batch)
  _, accumulated = step(4)
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  @jax.jit
  def micro_grad(params, micro, key):
    def loss(p):
      key_loss, key_dropout = jax.random.split(key)
      return nnx.merge(graphdef, p).loss(micro, key_loss, rngs=nnx.Rngs(dropout=key_dropout)).objective
    return jax.value_and_grad(loss)(params)

  micros = batch["x"].reshape(4, 4, -1)
  values, grads = zip(*[micro_grad(state.params, micros[i], jax.random.fold_in(step_key, i)) for i in range(4)])
  mean_grad = jax.tree.map(lambda *g: sum(g) / 4, *grads)
  np.testing.assert_allclose(accumulated["objective"], np.mean(values), rtol=1e-5)
  np.testing.assert_allclose(accumulated["grad_norm"], float(optax_norm(mean_grad)), rtol=1e-4)
  assert len({float(v) for v in values}) == 4  # each microbatch drew its own t and masks
  _, single = step(1)
  assert abs(float(single["objective"]) - float(accumulated["objective"])) > 0  # not the same rng


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_unknown_config_key_fails_clearly(tmp_path):
  proc = _run_cli(["--config", "experiments/demo.py", "--workdir", str(tmp_path), "--config.train.nmu_steps=5"])
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0 and "nmu_steps" in out
  assert not os.path.exists(tmp_path / "checkpoints")


def test_missing_data_fails_clearly(tmp_path):
  proc = _run_cli(["--config", "experiments/demo.py", "--workdir", str(tmp_path),
                   "--config.data.path=/nonexistent/corpus.txt"])
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 1 and "/nonexistent/corpus.txt" in out and "error:" in out


def test_checkpoint_of_another_model_is_refused_and_kept(tmp_path):
  train.train_and_evaluate(tiny_config(num_steps=4), str(tmp_path))
  before = {p: os.path.getmtime(os.path.join(dp, p)) for dp, _, ps in os.walk(tmp_path / "checkpoints") for p in ps}
  other = tiny_config(num_steps=8)
  other.model.network.width = 64
  with pytest.raises(ValueError, match=r"config.json describes another model(.|\n)*width: saved 32 vs config 64"):
    train.train_and_evaluate(other, str(tmp_path))
  scanned = tiny_config(num_steps=8)
  scanned.model.network.scan_layers = True  # another parameter layout
  with pytest.raises(ValueError, match=r"model.network.scan_layers: saved False vs config True"):
    train.train_and_evaluate(scanned, str(tmp_path))
  os.remove(tmp_path / "config.json")  # a workdir written before config.json: the checkpoint's fingerprint refuses
  with pytest.raises(ValueError, match=r"model.network.width: checkpoint 32 vs config 64"):
    train.train_and_evaluate(other, str(tmp_path))
  after = {p: os.path.getmtime(os.path.join(dp, p)) for dp, _, ps in os.walk(tmp_path / "checkpoints") for p in ps}
  assert before == after and checkpoint_steps(str(tmp_path)) == [4]
  # A checkpoint written before model.network.scan_layers existed holds unrolled blocks: accepted as False.
  meta_file = tmp_path / "checkpoints" / "4" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  del meta["model"]["network"]["scan_layers"]
  meta_file.write_text(json.dumps(meta))
  manager = checkpoint.make_manager(str(tmp_path), read_only=True)
  checkpoint.check_meta(manager, 4, checkpoint.fingerprint(tiny_config(num_steps=4)))
  with pytest.raises(ValueError, match=r"model.network.scan_layers: checkpoint False vs config True"):
    checkpoint.check_meta(manager, 4, checkpoint.fingerprint(scanned))
  manager.close()


def test_nan_loss_stops_and_keeps_checkpoints(tmp_path):
  train.train_and_evaluate(tiny_config(num_steps=4), str(tmp_path))
  bad = tiny_config(num_steps=8, **{"optim.lr": float("inf")})
  with pytest.raises(FloatingPointError, match="NaN/Inf.*latest good one is step 4"):
    train.train_and_evaluate(bad, str(tmp_path))
  assert checkpoint_steps(str(tmp_path)) == [4]
  good = saved_state(str(tmp_path), 4)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(good["params"]))


def test_autoregressive_model_trains_with_the_same_loop(tmp_path):
  """objective='ar': causal attention, exact NLL; a later token never changes an earlier log-prob."""
  config = tiny_config(num_steps=20, **{"optim.lr": 3e-3, "train.log_every": 10, "train.sample_every": 20})
  config.diffusion.objective = "ar"
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics["train/nelbo"] == metrics["train/objective"] and np.isfinite(metrics["train/nelbo"])
  info = data_lib.dataset_info(config.data)
  graphdef, _ = nnx.split(make_model(config, info, 0), nnx.Param)
  model = nnx.merge(graphdef, saved_state(str(tmp_path), 20)["params"])  # trained: the head is not zero
  x = jax.random.randint(jax.random.key(0), (2, 32), 0, info.vocab_size)
  changed = x.at[:, 20].set((x[:, 20] + 1) % info.vocab_size)
  a, b = model.ar_token_log_probs(x), model.ar_token_log_probs(changed)
  np.testing.assert_array_equal(a[:, :20], b[:, :20])  # log p(x_n | x_<n) for n < 20 ignores x_20
  assert np.any(np.asarray(a[:, 21:] != b[:, 21:]))
