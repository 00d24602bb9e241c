"""Orbax checkpoints (args-based CheckpointManager API): train state, input-iterator state, model fingerprint.

A checkpoint holds three items: 'state' (TrainState: params, EMA, optimizer state, step, rng), 'data' (the
training iterator's state, so a resumed run continues at the same example) and 'meta' (the model-defining
part of the config). Restoring into a config whose model differs fails with a message listing the differences,
before anything is written.
"""

from __future__ import annotations

import ast
import datetime
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from md4_jax.training import optim
from md4_jax.training import sharding

ITEMS = ("state", "data", "meta")
DAMAGED_DIR = "damaged_checkpoints"  # WORKDIR/damaged_checkpoints/<step>-<UTC time>: damaged steps set aside


class MismatchError(ValueError):
  """An intact checkpoint written for another config (not damage: it is never set aside)."""


# Fields that change how a model is trained or run, not what its parameters mean: a checkpoint may be resumed,
# fine-tuned or sampled with other values.
RUNTIME_FIELDS = {"dropout", "remat", "dtype", "attention", "label_dropout", "antithetic", "cont_time",
                  "num_steps"}


def _without_runtime(tree: dict) -> dict:
  return {k: _without_runtime(v) if isinstance(v, dict) else v for k, v in tree.items() if k not in RUNTIME_FIELDS}


def fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config fields a checkpoint's parameters depend on (architecture, objective, schedule, data)."""
  data = {"name": config.data.name, "seq_len": config.data.get("seq_len")}
  if "label" in config.data:  # what the labels mean (QM9: rings or qed)
    data["label"] = config.data.label
  return _without_runtime({"model": config.model.to_dict(), "diffusion": config.diffusion.to_dict(), "data": data})


def make_manager(workdir: str, train_config: ml_collections.ConfigDict | None = None,
                 read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if train_config is None else train_config.keep,
      keep_period=(train_config.keep_period or None) if train_config is not None else None,
      enable_async_checkpointing=bool(train_config is not None and train_config.async_checkpoint),
      create=not read_only, read_only=read_only)
  directory = os.path.join(workdir, "checkpoints")
  if "://" not in directory:  # local paths made absolute; gs:// and other remote paths go to Orbax as they are
    directory = os.path.abspath(directory)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=ITEMS)


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict, meta: dict) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
      meta=ocp.args.JsonSave(meta)), force=True)


def differences(saved: dict, current: dict, saved_name: str = "checkpoint", prefix: str = "") -> list[str]:
  """'field: checkpoint a vs config b' (`saved_name` a) for each field where two fingerprints differ."""
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += differences(a, b, saved_name, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: {saved_name} {a!r} vs config {b!r}")
  return out


def check_meta(manager: ocp.CheckpointManager, step: int, meta: dict) -> None:
  """Raises ValueError if the checkpoint at `step` was written for another model config."""
  saved = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  if "label" not in saved.get("data", {}):  # written before data.label was fingerprinted: not compared
    meta = dict(meta, data={k: v for k, v in meta["data"].items() if k != "label"})
  network = saved.get("model", {}).get("network", {})
  if "scan_layers" in meta["model"].get("network", {}):  # written before scan_layers existed: unrolled blocks
    network.setdefault("scan_layers", False)
  diffs = differences(_without_runtime(saved), meta)
  if diffs:
    raise MismatchError(f"checkpoint {manager.directory}/{step} belongs to another model config; use another "
                     "--workdir or matching flags. Differences:\n  " + "\n  ".join(diffs))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, meta: dict,
            config: ml_collections.ConfigDict | None = None):
  """(state, data_state) of checkpoint `step`, placed as the shardings in `abstract_state` say.

  With `config`, a checkpoint trained with gradient clipping switched the other way is named as such
  (check_optimizer_layout).
  """
  check_meta(manager, step, meta)
  if config is not None:
    check_optimizer_layout(manager, step, config, abstract_state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored["state"], restored["data"]


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


# Files every checkpoint step needs (relative to its folder); JSON ones are parsed, the others must be non-empty.
REQUIRED_JSON = ("state/_METADATA", "data/metadata", "meta/metadata")
REQUIRED_NONEMPTY = ("state/manifest.ocdbt",)


def damage(manager: ocp.CheckpointManager, step: int) -> str | None:
  """How the files of checkpoint `step` are damaged (a missing, empty or unparsable file), or None."""
  folder = manager.directory / str(step)
  for name in REQUIRED_JSON + REQUIRED_NONEMPTY:
    path = folder / name
    if not path.exists():
      return f"{name} is missing"
    content = path.read_bytes()
    if not content.strip(b"\0 \n"):
      return f"{name} is empty ({len(content)} bytes{', all zero' if content else ''})"
    if name in REQUIRED_JSON:
      try:
        json.loads(content)
      except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{name} is not valid JSON ({error}; {len(content)} bytes: truncated or overwritten)"
  return None


TENSORSTORE_SPEC = (" [tensorstore_spec", " See full TensorStore")  # where a read error's spec dump starts


def _first_line(error: BaseException, limit: int = 400, cut: tuple[str, ...] = ()) -> str:
  """The first line of `error`'s message, up to the first of the markers `cut`; a long one keeps its start and its
  end (the OS error's words)."""
  line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  for marker in cut:
    line = line.split(marker)[0].strip()
  return line if len(line) <= limit else f"{line[:limit // 2]} ... {line[-limit // 2:]}"


def _opt_paths(opt_state) -> set[tuple[str, ...]]:
  return {("opt_state",) + tuple(map(str, sharding.path_key(path)))
          for path, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]}


def check_optimizer_layout(manager: ocp.CheckpointManager, step: int, config: ml_collections.ConfigDict,
                           abstract_state) -> None:
  """Raises MismatchError naming optim.grad_clip if checkpoint `step` was written with clipping switched the
  other way (the one optim field that changes the optimizer state's layout)."""
  saved = json.loads((manager.directory / str(step) / "state/_METADATA").read_bytes())["tree_metadata"]
  saved = {ast.literal_eval(k) for k in saved}
  if _opt_paths(abstract_state.opt_state) <= saved:
    return
  other = ml_collections.ConfigDict(config.optim.to_dict())
  other.grad_clip = 0.0 if config.optim.grad_clip > 0 else 1.0
  tx = optim.make_optimizer(other, config.train.num_steps)
  if _opt_paths(jax.eval_shape(tx.init, abstract_state.params)) <= saved:
    was = "on (optim.grad_clip > 0)" if config.optim.grad_clip <= 0 else "off (optim.grad_clip = 0)"
    raise MismatchError(
        f"checkpoint {manager.directory}/{step} was trained with gradient clipping {was}: its optimizer state has "
        f"another layout; resume with optim.grad_clip as it was (this config has {config.optim.grad_clip})")


def _all_processes(ok: bool) -> bool:
  """True if `ok` holds on every process (every process calls this at the same point)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def first_intact(manager: ocp.CheckpointManager, steps: list[int], restore_fn, on_damaged):
  """(step, restore_fn(step)) for the first of `steps` whose checkpoint is intact, or None.

  A damaged one (`damage` finds a bad file, or reading its arrays fails) is passed to on_damaged(step, how).
  MismatchError (an intact checkpoint of another config) and a tree that does not fit the config propagate:
  that is not damage, and the steps before it would not fit either.
  """
  for step in steps:
    how, restored = damage(manager, step), None
    if how is None:
      try:
        restored = restore_fn(step)
      except MismatchError:
        raise
      except Exception as error:  # pylint: disable=broad-except  (TensorStore raises bare Exception)
        if "pytree structure" in str(error):
          raise MismatchError(f"checkpoint {manager.directory}/{step} does not fit this config's train state "
                              f"({_first_line(error)}); use the config it was trained with") from error
        how = f"its arrays cannot be read ({_first_line(error, cut=TENSORSTORE_SPEC)})"
    if _all_processes(how is None):
      return step, restored
    on_damaged(step, how or "another process could not read it")
  return None


def set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves checkpoint `step` to WORKDIR/damaged_checkpoints/<step>-<UTC time> (never deletes it); returns where."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
  target = manager.directory.parent / DAMAGED_DIR / f"{step}-{stamp}"
  if jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    (manager.directory / str(step)).rename(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"md4_jax checkpoint {step} set aside")
  manager.reload()
  return str(target)


def restore_newest_intact(manager: ocp.CheckpointManager, config: ml_collections.ConfigDict, abstract_state):
  """(step, (state, data_state)) of the newest intact checkpoint of `config`, or None if there is none.

  Newer damaged ones are named (which file, how) and moved aside with `set_aside`.
  """
  def on_damaged(step, how):
    print(f"checkpoint {manager.directory}/{step} is damaged: {how}; moved to {set_aside(manager, step)}, "
          "falling back to the step before", flush=True)

  return first_intact(manager, sorted(manager.all_steps(), reverse=True),
                      lambda step: restore(manager, step, abstract_state, fingerprint(config), config), on_damaged)


class SaveFailedError(OSError):
  """Writing a checkpoint failed (in the background for asynchronous saves)."""


class _OrbaxErrors(logging.Filter):
  """Keeps the last error Orbax logs (from its background threads) and drops the record with its traceback."""

  def __init__(self):
    super().__init__()
    self.last = None

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    error = record.exc_info[1] if record.exc_info else None
    self.last = _first_line(error) if error is not None else record.getMessage().splitlines()[0]
    return False


class Saver:
  """Saves checkpoints and surfaces a failed one, synchronous or asynchronous, as one SaveFailedError.

  `check()` after every step costs a flag read while a save runs; once it has finished, it raises if the step
  was not written. Orbax's logged error tracebacks are not printed: their first line is in the message
  (TensorStore's own tracebacks after a failed write: stderr_filter).
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self.manager = manager
    self.pending = None  # the step of the last save, until checked
    self._errors = _OrbaxErrors()
    logging.getLogger("absl").addFilter(self._errors)

  def _failed(self, step: int, error: BaseException | None) -> SaveFailedError:
    why = _first_line(error) if error is not None else (self._errors.last or "no error was reported")
    return SaveFailedError(f"writing checkpoint {self.manager.directory}/{step} failed: {why}")

  def save(self, step: int, state, data_state: dict, meta: dict) -> None:
    self.check(wait=True)
    self._errors.last = None
    try:
      save(self.manager, step, state, data_state, meta)
    except Exception as error:  # pylint: disable=broad-except
      raise self._failed(step, error) from error
    self.pending = step

  def check(self, wait: bool = False) -> None:
    """Raises SaveFailedError if the last save failed; returns at once while it is still running (wait=False)."""
    if self.pending is None or (not wait and self.manager.is_saving_in_progress()):
      return
    step, self.pending = self.pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except
      raise self._failed(step, error) from error
    if not (self.manager.directory / str(step)).exists():  # committed: renamed to its final name
      raise self._failed(step, None)

  def close(self) -> None:
    """Waits for the last save and checks it; closes the manager even if that raises."""
    try:
      self.check(wait=True)
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except  (the failure was raised above, or by the loop)
        pass
      logging.getLogger("absl").removeFilter(self._errors)
