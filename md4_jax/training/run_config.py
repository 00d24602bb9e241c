"""The resolved config of a run, kept in its workdir (`WORKDIR/config.json`): a workdir says what it holds.

Training writes it at its first start (every override applied); sampling, evaluation and conversion read it, so a
checkpoint needs only `--workdir`.
"""

from __future__ import annotations

import json
import os

import ml_collections

from md4_jax.training import atomic

FILENAME = "config.json"


def path(workdir: str) -> str:
  return os.path.join(workdir, FILENAME)


def save(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes `config` (resolved: field references and overrides applied) to WORKDIR/config.json atomically."""
  os.makedirs(workdir, exist_ok=True)
  atomic.write(path(workdir), json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def load(workdir: str) -> ml_collections.ConfigDict | None:
  """The config saved in `workdir`, or None for a workdir written before configs were saved."""
  if not os.path.exists(path(workdir)):
    return None
  with open(path(workdir)) as f:
    try:
      tree = json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f"{path(workdir)} is not a valid config file ({error}); pass --config") from error
  return ml_collections.ConfigDict(tree)


def check(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict, workdir: str) -> None:
  """ValueError listing the differences if `config` describes another model (checkpoint.fingerprint) than the
  config `saved` in `workdir`."""
  from md4_jax.training import checkpoint  # pylint: disable=g-import-not-at-top  # (Orbax: only where it is compared)
  as_json = lambda config: json.loads(json.dumps(checkpoint.fingerprint(config)))  # tuples read back as lists
  diffs = checkpoint.differences(as_json(saved), as_json(config), saved_name="saved")
  if diffs:
    raise ValueError(f"{path(workdir)} describes another model than this config; use another --workdir or "
                     "matching flags. Differences:\n  " + "\n  ".join(diffs))
