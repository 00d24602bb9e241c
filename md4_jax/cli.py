"""The one command-line convention of the binaries (train, evaluate, sample_ancestral, sample_remdm, scaling_report,
molecules, convert, sweep and the sweep's per-member sweep_quality): absl flags plus an ml_collections config flag.

    python -m md4_jax.<binary> --workdir W [--config experiments/<name>.py[:arg]] [--config.a.b=v ...] [flags]

The config is the experiment file given by --config, else the run's own WORKDIR/config.json
(md4_jax.training.run_config): a trained workdir needs no --config. `--config.a.b=v` overrides a field; a field the
config lacks ends the program with one line naming it and the closest valid one (exit status 2). Where the workdir
holds a config.json, the config used must describe the same model (checkpoint.fingerprint): otherwise one error
names the differences.
"""

from __future__ import annotations

import difflib
import sys
from typing import Callable

import ml_collections

from md4_jax.training import config_base
from md4_jax.training import distributed
from md4_jax.training import run_config


def flag_value(argv: list[str], name: str) -> tuple[str | None, list[str]]:
  """(the value of --name=v or --name v in argv (the last one) or None, argv without them)."""
  value, rest, args = None, [], iter(argv)
  for arg in args:
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}":
      value = next(args, None)
    else:
      rest.append(arg)
  return value, rest


def print_error(message: str, kind: str = "error") -> None:
  """'<kind>: <message>' on stderr in one write (print() writes the newline apart: a thread printing at the same
  time, as TensorStore's after a failed save, could land inside the line)."""
  sys.stderr.write(f"{kind}: {message}\n")
  sys.stderr.flush()


def usage_error(message: str) -> int:
  """Prints 'usage error: <message>' to stderr; returns 2, the exit status of a usage error."""
  print_error(message, "usage error")
  return 2


def _paths(tree: dict, prefix: str = "") -> list[str]:
  out = []
  for key, value in tree.items():
    out.append(prefix + key)
    if isinstance(value, dict):
      out += _paths(value, f"{prefix}{key}.")
  return out


def unknown_override(config: ml_collections.ConfigDict, argv: list[str]) -> str | None:
  """'unknown config key ...' for the first --config.a.b override naming a field `config` lacks, else None."""
  paths = _paths(config.to_dict())
  for arg in argv:
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      if key not in paths:
        closest = difflib.get_close_matches(key, paths, n=1, cutoff=0.0)
        return f"unknown config key {key!r}; the closest valid one is {closest[0]!r}"
  return None


def parse(argv: list[str], doc: str, define: Callable, *, prepare: Callable = lambda config: config,
          workdir_help: str = "the training run's directory", need_workdir: bool = True,
          default_config: str | None = None):
  """(flag values, config) of argv (as sys.argv), or an exit code: 0 after --help, 2 for a usage error, 1 for a
  config that describes another model than the workdir's config.json.

  define(flag_values): defines the binary's own flags. prepare(config) -> config: applied to the loaded config
  before the overrides (a binary's defaults). need_workdir=False: --workdir is optional (molecules reads several
  workdirs of its own flag) and --config gives the config. default_config: the experiment file used without
  --config and config.json. The config comes back locked.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  def make_flags(config, args):
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config, "the run's config: --config FILE (experiments/*.py[:arg]), "
                                    "else WORKDIR/config.json; --config.a.b=v overrides a field",
                                    flag_values=flag_values, lock_config=True, sys_argv=list(args))
    flags.DEFINE_string("workdir", None, workdir_help, flag_values=flag_values)
    define(flag_values)
    return flag_values

  if any(a in ("-h", "--help", "-help") for a in argv[1:]):
    print(doc + "\n" + make_flags(ml_collections.ConfigDict(), argv[:1]).get_help(), flush=True)
    return 0
  (file, args), (workdir, _) = flag_value(argv, "config"), flag_value(argv, "workdir")
  try:
    saved = run_config.load(workdir) if workdir else None
    if file or (saved is None and default_config):
      path, _, arg = (file or default_config).partition(":")
      config = config_base.load_experiment(path, arg or None)
    elif saved is not None:
      config = saved.copy_and_resolve_references()  # `saved` stays as written, to compare with
    else:
      where = f"{run_config.path(workdir)} not found" if workdir else "no --workdir"
      raise ValueError(f"missing --config experiments/<name>.py ({where}; a run's workdir says its config once "
                       "md4_jax.train has started it)")
    config = prepare(config)
  except ValueError as error:
    return usage_error(str(error))
  problem = unknown_override(config, argv)
  if problem:
    return usage_error(problem)
  flag_values = make_flags(config, args)
  try:
    rest = flag_values(args)
  except flags.Error as error:
    return usage_error(f"{error} (see --help)")
  missing = need_workdir and flag_values.workdir is None
  if missing or len(rest) > 1:
    problem = "missing --workdir" if missing else f"unexpected arguments {rest[1:]}"
    return usage_error(f"{problem} (see --help)")
  if saved is not None:
    try:
      run_config.check(saved, flag_values.config, workdir)
    except ValueError as error:
      print_error(str(error))
      return 1
  return flag_values, flag_values.config


def run(argv: list[str], doc: str, define: Callable, body: Callable, *, verbosity: str = "error", **kwargs) -> int:
  """A binary: `parse` (kwargs go there), absl logging at `verbosity` (Orbax logs every save and restore at INFO),
  jax.distributed (--multihost where the binary has it), then body(flag_values, config). Returns the exit code:
  body's (None = 0), or 1 with one 'error:' line for bad input (ValueError, OSError, ImportError,
  FloatingPointError)."""
  parsed = parse(argv, doc, define, **kwargs)
  if isinstance(parsed, int):
    return parsed
  flag_values, config = parsed
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(verbosity)
  distributed.initialize("multihost" in flag_values and flag_values.multihost)
  try:
    return body(flag_values, config) or 0
  except (ValueError, OSError, ImportError, FloatingPointError) as error:
    print_error(str(error))
    return 1


def entry(main: Callable[[list[str]], int]) -> Callable[[], None]:
  """The console entry point (setup.cfg) and `python -m` body of a binary: sys.exit(main(sys.argv))."""
  return lambda: sys.exit(main(sys.argv))
