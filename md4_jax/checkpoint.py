"""Orbax checkpoints (args-based CheckpointManager API): train state, input-iterator state, model fingerprint.

A checkpoint holds three items: 'state' (TrainState: params, EMA, optimizer state, step, rng), 'data' (the
training iterator's state, so a resumed run continues at the same example) and 'meta' (the model-defining
part of the config). Restoring into a config whose model differs fails with a message listing the differences,
before anything is written.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "meta")


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


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
  """'field: checkpoint a vs config b' for each field where two fingerprints differ."""
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += differences(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: checkpoint {a!r} vs config {b!r}")
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
    raise ValueError(f"checkpoint {manager.directory}/{step} belongs to another model config; use another "
                     "--workdir or matching flags. Differences:\n  " + "\n  ".join(diffs))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, meta: dict):
  """(state, data_state) of checkpoint `step`, placed as the shardings in `abstract_state` say."""
  check_meta(manager, step, meta)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored["state"], restored["data"]


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)
