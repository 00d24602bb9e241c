"""A sweep: an experiment's `get_sweep()` (a list of override dicts, dotted config key -> value), its members'
names and command lines, and their validation before anything trains.

    def get_sweep():  # in experiments/X.py
      return sweep_spec.product(sweep_spec.axis("diffusion.schedule", ("linear", "cosine")),
                                sweep_spec.axis("seed", (0, 1)))

Member i runs `python -m md4_jax.train --config X --workdir ROOT/<name> --config.k=v ...` (the sweep's own
--config.k=v first, then the member's). Its name comes from its overrides: `schedule-cosine_seed-1` (the last part
of each key, the whole dotted key where two keys share a last part; characters outside [A-Za-z0-9._+-] become '~').
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import os
import re
from typing import Any, Sequence

import ml_collections

RESERVED = "_sweep"  # ROOT/_sweep holds the sweep's logs and member status files


def axis(key: str, values: Sequence[Any]) -> list[dict]:
  """One swept key: [{key: v} for v in values]."""
  return [{key: v} for v in values]


def product(*sweeps: list[dict]) -> list[dict]:
  """Every combination of one override dict from each sweep (the first sweep varies slowest)."""
  return [_merge(combo) for combo in itertools.product(*sweeps)]


def zipped(*sweeps: list[dict]) -> list[dict]:
  """The i-th override dicts of all sweeps merged (all sweeps of one length)."""
  if len({len(s) for s in sweeps}) > 1:
    raise ValueError(f"zipped sweeps need equal lengths; got {[len(s) for s in sweeps]}")
  return [_merge(combo) for combo in zip(*sweeps)]


def _merge(dicts) -> dict:
  out = {}
  for d in dicts:
    for key in d:
      if key in out:
        raise ValueError(f"key {key!r} is set by two of the combined sweeps")
    out.update(d)
  return out


@dataclasses.dataclass(frozen=True)
class Member:
  index: int
  name: str
  overrides: dict  # dotted key -> value (the member's own)

  def flag_args(self, common: Sequence[str]) -> list[str]:
    """--config.k=v arguments: the sweep's common ones, then the member's."""
    return list(common) + [f"--config.{key}={flag_value(v)}" for key, v in self.overrides.items()]


def flag_value(value) -> str:
  if isinstance(value, (bool, int, float, str)):
    return str(value)
  if isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value):
    return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
  raise ValueError(f"value {value!r} ({type(value).__name__}) cannot be given on a command line; sweep over "
                   "bool, int, float, str or tuples of them")


def _safe(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._+-]", "~", text)


def member_names(sweep: list[dict]) -> list[str]:
  keys = list(dict.fromkeys(k for overrides in sweep for k in overrides))
  short = {k: k.rsplit(".", 1)[-1] for k in keys}
  clash = {k for k in keys if list(short.values()).count(short[k]) > 1}
  label = {k: k if k in clash else short[k] for k in keys}
  return ["_".join(f"{_safe(label[k])}-{_safe(flag_value(v))}" for k, v in overrides.items()) or "base"
          for overrides in sweep]


def load_sweep(config_path: str) -> list[Member]:
  """The members of `get_sweep()` in the experiment file (`path` or `path:arg`); ValueError if it is missing,
  empty, malformed or gives two members one name."""
  path = config_path.split(":", 1)[0]
  if not os.path.exists(path):
    raise ValueError(f"no experiment config file at {path!r}")
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} defines no get_sweep(); add one returning a list of override dicts, e.g. "
                     "[{'diffusion.schedule': s} for s in ('linear', 'cosine')]")
  sweep = module.get_sweep()
  if not isinstance(sweep, list) or not sweep:
    raise ValueError(f"{path}: get_sweep() returned {sweep!r}; it must return a non-empty list of override dicts")
  for i, overrides in enumerate(sweep):
    if not isinstance(overrides, dict) or not all(isinstance(k, str) and k for k in overrides):
      raise ValueError(f"{path}: sweep member {i} is {overrides!r}; expected a dict of dotted config keys to values")
    for key, value in overrides.items():
      try:
        flag_value(value)
      except ValueError as error:
        raise ValueError(f"sweep member {i}, key {key!r}: {error}") from error
  names = member_names(sweep)
  for i, name in enumerate(names):
    if names.index(name) != i:
      raise ValueError(f"sweep members {names.index(name)} and {i} share the name {name!r} (overrides "
                       f"{sweep[names.index(name)]} and {sweep[i]}); every member needs distinct overrides")
  return [Member(i, name, dict(o)) for i, (name, o) in enumerate(zip(names, sweep))]


def select(members: list[Member], pattern: str | None) -> list[Member]:
  """The members whose name matches the regular expression `pattern` (None: all)."""
  if pattern is None:
    return members
  chosen = [m for m in members if re.search(pattern, m.name)]
  if not chosen:
    raise ValueError(f"--only={pattern!r} matches none of the members: {', '.join(m.name for m in members)}")
  return chosen


def resolve(config_path: str, flag_args: Sequence[str]) -> ml_collections.ConfigDict:
  """The locked config a member's `train` builds from `--config config_path` and `flag_args`, parsed by the same
  ml_collections config_flags (types checked, unknown keys refused)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ["train", "--config", config_path] + list(flag_args)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
  try:
    flag_values(argv)
  except (AttributeError, KeyError) as error:
    raise ValueError(f"the config has no field {error}") from error
  except flags.Error as error:
    raise ValueError(str(error)) from error
  return flag_values.config


def check(config: ml_collections.ConfigDict, data_checked: set) -> None:
  """The checks training runs before step 1 (experiment.build: mesh, batch sizes, data facts, model, optimizer;
  the training data opens; the train step traced on abstract shapes, so a model that does not fit the data
  fails here), with nothing compiled. `data_checked` skips data already opened."""
  import jax  # pylint: disable=g-import-not-at-top
  from md4_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from md4_jax.training import experiment  # pylint: disable=g-import-not-at-top
  from md4_jax import train  # pylint: disable=g-import-not-at-top
  exp = experiment.build(config)
  with jax.set_mesh(exp.mesh):
    jax.eval_shape(train.jit_train_step(exp), exp.abstract_state, exp.abstract_batch(config.train.batch_size))
  key = json.dumps(config.data.to_dict(), sort_keys=True, default=str)
  if key not in data_checked:
    data_lib.make_dataset(config.data, "train", batch_size=config.train.batch_size, seed=config.seed)
    data_checked.add(key)


def validate(config_path: str, members: list[Member], common: Sequence[str]) -> dict[str, ml_collections.ConfigDict]:
  """Every member's resolved and checked config by name; ValueError naming the first bad member and its error."""
  swept = {k for m in members for k in m.overrides}
  for arg in common:
    key = arg.split("=", 1)[0].removeprefix("--config.")
    if key in swept:
      raise ValueError(f"--config.{key} is swept by get_sweep(); it cannot also be set for the whole sweep")
  configs, data_checked = {}, set()
  for m in members:
    try:
      config = resolve(config_path, m.flag_args(common))
      check(config, data_checked)
    except (ValueError, OSError, TypeError) as error:
      raise ValueError(f"sweep member {m.index} ({m.name}, overrides {m.overrides}): {error}") from error
    configs[m.name] = config
  return configs
