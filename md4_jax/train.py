"""The one training loop, for every experiment (MD4 and GenMD4, text and images).

    python -m md4_jax.train --config experiments/demo.py --workdir /tmp/demo [--config.key=value ...]
    python -m md4_jax.train --workdir /tmp/demo          # resume: the run's config is WORKDIR/config.json

Reads top to bottom: mesh -> data -> model and abstract state -> shardings -> jitted steps -> resume -> loop.
The loop body: batch -> step -> maybe log -> maybe checkpoint -> maybe evaluate / sample. SIGTERM saves a
checkpoint and exits cleanly; a NaN / Inf loss or gradient skips the update and stops with a message,
leaving the checkpoints as they were.

Robustness: one run per workdir (workdir_lock); every input the loop meets later checked before step 1
(preflight); resume from the newest intact checkpoint, damaged newer ones named and moved aside; a failed save,
synchronous or in the background, stops the run with one line and a non-zero exit within a step.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import signal
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from md4_jax.training import checkpoint
from md4_jax import data as data_lib
from md4_jax import cli
from md4_jax.evaluation import nelbo as evaluation
from md4_jax.training import experiment as experiment_lib
from md4_jax.training import metrics as metrics_lib
from md4_jax.training import optim
from md4_jax import generate
from md4_jax.training import preflight
from md4_jax.training import run_config
from md4_jax.training import sharding
from md4_jax.training import stderr_filter
from md4_jax.training import train_state as train_state_lib
from md4_jax.training import workdir_lock
from md4_jax.diffusion import bits_per_token


def train_step(state: train_state_lib.TrainState, batch: dict, *, graphdef, tx, ema_decay: float,
               grad_accum_steps: int):
  """One optimizer step on a global batch {'x': [B, *S], 'label'?: [B]}; pure, jitted once.

  With k = grad_accum_steps, the batch is split into k microbatches, each with its own rng
  (fold_in of the step key), and the gradients are averaged.
  """
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params, micro, key):
    model = nnx.merge(graphdef, params)
    key_loss, key_dropout = jax.random.split(key)
    loss = model.loss(micro["x"], key_loss, micro.get("label"), rngs=nnx.Rngs(dropout=key_dropout))
    return loss.objective, loss.nelbo

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  micro = jax.tree.map(lambda a: a.reshape((grad_accum_steps, -1) + a.shape[1:]), batch)

  def accumulate(carry, inputs):
    index, micro_batch = inputs
    (objective, nelbo), grads = grad_fn(state.params, micro_batch, jax.random.fold_in(step_key, index))
    grad_sum, objective_sum = carry
    return (jax.tree.map(jnp.add, grad_sum, grads), objective_sum + objective), nelbo

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  (grad_sum, objective_sum), nelbo = jax.lax.scan(
      accumulate, (zeros, jnp.zeros(())), (jnp.arange(grad_accum_steps), micro))
  grads = jax.tree.map(lambda g: g / grad_accum_steps, grad_sum)
  objective = objective_sum / grad_accum_steps

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(objective) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      ema_params=keep(train_state_lib.ema_update(state.ema_params, params, ema_decay), state.ema_params),
      opt_state=keep(opt_state, state.opt_state),
      nonfinite=state.nonfinite + (~finite).astype(jnp.int32))
  metrics = {"objective": objective, "nelbo": jnp.mean(nelbo), "grad_norm": grad_norm}
  return new_state, metrics


def jit_train_step(exp: experiment_lib.Experiment):
  """`train_step` of `exp`, jitted over its mesh with the state donated: (state, batch) -> (state, metrics)."""
  config = exp.config
  return jax.jit(
      functools.partial(train_step, graphdef=exp.graphdef, tx=exp.tx, ema_decay=config.optim.ema_decay,
                        grad_accum_steps=config.train.grad_accum_steps),
      in_shardings=(exp.state_sharding, sharding.batch_sharding(exp.mesh)),
      out_shardings=(exp.state_sharding, sharding.replicated(exp.mesh)), donate_argnums=0)


class _Preemption:
  """SIGTERM -> a step at which every process saves a checkpoint and stops.

  A signal handler sets this process's flag. With several processes the flags are OR-ed over all of them by a
  tiny jitted reduction dispatched after each step, and the loop reads the previous step's result: the devices
  have finished it by then, so the check never holds back the dispatch of the next step, and every process reads
  the same value at the same step. A run stops at most two steps after the signal.
  """

  def __init__(self, mesh: jax.sharding.Mesh):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    self._mesh = mesh
    self._pending = None  # the OR of all flags, dispatched after the previous step
    self._any = jax.jit(jnp.any, out_shardings=sharding.replicated(mesh))

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def agreed(self) -> bool:
    """True when any process received SIGTERM (called after every step, on every process)."""
    if jax.process_count() == 1:
      return self.requested
    local = np.full(len(self._mesh.local_devices), self.requested)  # [local devices]
    flags = jax.make_array_from_process_local_data(sharding.batch_sharding(self._mesh), local)
    previous, self._pending = self._pending, self._any(flags)
    return previous is not None and bool(previous)

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest intact checkpoint); returns the last metrics.

  Raises workdir_lock.WorkdirLockedError, naming the holder, if another live run holds `workdir`.
  """
  start = time.time()
  lock = workdir_lock.acquire_for_run(workdir)  # before anything is written into workdir
  try:
    return _train_locked(config, workdir, start)
  finally:
    if lock is not None:
      lock.release()


def _train_locked(config: ml_collections.ConfigDict, workdir: str, start: float) -> dict[str, float]:
  saved = run_config.load(workdir)
  if saved is not None:  # a resumed run: the same model as at its first start
    run_config.check(saved, config, workdir)
  exp = experiment_lib.build(config)
  mesh = exp.mesh
  train_data = data_lib.make_dataset(
      config.data, "train", batch_size=config.train.batch_size // jax.process_count(), seed=config.seed,
      shard_index=jax.process_index(), shard_count=jax.process_count())
  step_fn = jit_train_step(exp)
  eval_fn = evaluation.make_eval_fn(exp)

  def compile_step():
    with jax.set_mesh(mesh):
      return step_fn.lower(exp.abstract_state, exp.abstract_batch(config.train.batch_size)).compile()

  # The step compiles from abstract shapes on a worker thread while the inputs are checked and the state is
  # initialised or restored here (XLA releases the GIL): start-up costs about the longer of the two, not their
  # sum. A failed check or restore does not wait for the compilation.
  pool = concurrent.futures.ThreadPoolExecutor(1)
  try:
    compiling = pool.submit(compile_step)
    preflight.check(exp, eval_fn, workdir)
    manager = checkpoint.make_manager(workdir, config.train)
    found = checkpoint.restore_newest_intact(
        manager, config, checkpoint.abstract_with_shardings(exp.abstract_state, exp.state_sharding))
    if found is not None:  # resume from the newest intact checkpoint, or start fresh
      latest, (state, data_state) = found
      train_data.set_state(data_state)
      print(f"resumed from {manager.directory}/{latest}", flush=True)
    else:
      latest, state = 0, exp.init_state()
    if saved is None and jax.process_index() == 0:
      run_config.save(workdir, config)  # the resolved config: the workdir says what it holds
    step_fn = compiling.result()
  finally:
    pool.shutdown(wait=False)

  writer = metrics_lib.MetricWriter(workdir, config.train.num_steps, resume_step=latest)
  saver = checkpoint.Saver(manager)
  preemption = _Preemption(mesh)
  meta = checkpoint.fingerprint(config)
  step = int(state.step)
  last = {}
  sums, count = None, 0
  try:
    with jax.set_mesh(mesh):
      while step < config.train.num_steps:
        state, step_metrics = step_fn(state, exp.global_batch(next(train_data)))
        step += 1
        sums = step_metrics if sums is None else jax.tree.map(jnp.add, sums, step_metrics)
        count += 1
        if step == latest + 1:  # this run's first step
          jax.block_until_ready(state)
          last["time/first_step_s"] = time.time() - start
          print(f"first step done {last['time/first_step_s']:.1f}s after start (compilation included)", flush=True)
        if _due(step, config.train.log_every, config.train.num_steps):
          _raise_if_nonfinite(state, manager)
          scalars = {f"train/{k}": float(v) / count for k, v in sums.items()}
          scalars["train/bits_per_token"] = float(
              bits_per_token(scalars["train/nelbo"], exp.tokens_per_example))
          scalars["train/lr"] = float(optim.learning_rate_schedule(config.optim, config.train.num_steps)(step))
          rate = writer.progress(step, {"loss": scalars["train/objective"], "bpt": scalars["train/bits_per_token"]})
          if rate:
            scalars["train/steps_per_second"] = rate
          writer.write(step, scalars)
          last.update(scalars)
          sums, count = None, 0
        preempted = preemption.agreed()  # a due checkpoint is saved before evaluation and sampling can fail
        if preempted or _due(step, config.train.checkpoint_every, config.train.num_steps):
          _raise_if_nonfinite(state, manager)
          saver.save(step, state, train_data.get_state(), meta)
        if preempted:
          print(f"SIGTERM: saved checkpoint {step} and stopped", flush=True)
          break
        if _due(step, config.train.eval_every, config.train.num_steps):
          eval_metrics = evaluation.evaluate(exp, eval_fn, state.ema_params)
          if jax.process_index() == 0:
            print(f"step {step} | validation bits/token {eval_metrics['eval/bits_per_token']:.4f}", flush=True)
          writer.write(step, eval_metrics)
          last.update(eval_metrics)
        if _due(step, config.train.sample_every, config.train.num_steps):
          generate.training_samples(exp.graphdef, state.ema_params, config, exp.info, mesh, workdir, step)
        saver.check()  # a failed background save stops the run here, not at the next checkpoint
  finally:
    _close_all(saver.close, writer.close, preemption.restore, quiet=sys.exc_info()[1] is not None)
  return last


def _close_all(*closers, quiet: bool) -> None:
  """Runs every closer, then raises the first error, unless `quiet`: a failing run's own error is the one to report,
  not a cleanup's after it (metrics.jsonl on the disk that a checkpoint filled)."""
  first = None
  for close in closers:
    try:
      close()
    except Exception as error:  # pylint: disable=broad-except
      first = first or error
  if first is not None and not quiet:
    raise first


def _due(step: int, every: int, num_steps: int) -> bool:
  return every > 0 and (step % every == 0 or step == num_steps)


def _raise_if_nonfinite(state, manager) -> None:
  bad = int(state.nonfinite)
  if bad:
    raise FloatingPointError(
        f"the loss or gradient became NaN/Inf (at {bad} step(s) before step {int(state.step)}); those updates "
        f"were skipped and training stopped. Checkpoints are untouched; the latest good one is step "
        f"{manager.latest_step()}. Lower optim.lr, raise optim.warmup_steps or check the data.")


DEFAULT_COMPILATION_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                         "md4_jax", "jax")


def enable_compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache in `path` ('' = off), unless JAX_COMPILATION_CACHE_DIR already set one.

  A rerun of the same shapes (a resumed or repeated run) then loads its compiled step instead of compiling it.
  """
  if path and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", path)


def define_flags(fv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_bool("multihost", False, "join a multi-process run detected by jax.distributed (TPU pod, SLURM, "
                    "Open MPI); a run with JAX_COORDINATOR_ADDRESS set joins without it", flag_values=fv)
  flags.DEFINE_string("compilation_cache_dir", DEFAULT_COMPILATION_CACHE,
                      "JAX persistent compilation cache ('' = off; JAX_COMPILATION_CACHE_DIR takes precedence)",
                      flag_values=fv)


def main(argv: list[str]) -> int:
  """`python -m md4_jax.train` (argv as sys.argv); returns the exit code."""
  def body(f, config):
    enable_compilation_cache(f.compilation_cache_dir)
    try:
      train_and_evaluate(config, f.workdir)
    except workdir_lock.WorkdirLockedError as error:
      cli.print_error(str(error))
      return 1
  return cli.run(argv, __doc__, define_flags, body, verbosity="warning",
                 workdir_help="directory for checkpoints, metrics and samples")


def run() -> None:
  """Console entry point (md4-train) and `python -m md4_jax.train`.

  A failed run exits at once (os._exit): after a failed background save, Orbax threads can block a normal
  interpreter exit forever, and a scheduler would see a live job. The workdir lock and the metric files are closed
  by then. TensorStore's closed-event-loop tracebacks after a failed write are filtered from stderr.
  """
  quiet = stderr_filter.ClosedLoopFilter()
  try:
    code = main(sys.argv)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  quiet.close(discard_rest=bool(code))
  if code:
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(0)


if __name__ == "__main__":
  run()
