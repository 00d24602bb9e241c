"""Converts a PyTorch checkpoint of MDLM's DiT (MDLM / ReMDM / DUO) into a workdir of ours.

    python -m md4_jax.convert --source mdlm --input PATH --output WORKDIR [--config experiments/owt_mdlm.py] \\
        [--config.sampler.num_steps=1024 ...]
    md4-convert --source mdlm --input mdlm-owt/ --output /ckpt/mdlm_owt

PATH: a Hugging Face folder (config.json + model.safetensors), a bare .safetensors / .bin state dict, or a Lightning
.ckpt (its EMA weights when present; the message says which were taken). .bin and .ckpt need torch
(`pip install -e ".[torch]"`). WORKDIR is self-describing, as a training run's: WORKDIR/config.json (the --config
experiment with the checkpoint's sizes; run_config) and an Orbax checkpoint of step 0 in the layout training writes
(items state / data / meta; params = EMA params = the converted weights, a fresh optimizer state; the data item is
empty, so training from it starts the data from the beginning). Every check (keys, shapes, the vocabulary against
the config's tokenizer, an empty WORKDIR) runs before anything is written; a refusal exits 1 with one line.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from md4_jax import cli
from md4_jax.training import checkpoint
from md4_jax.training import config_base
from md4_jax import data as data_lib
from md4_jax.training import experiment as experiment_lib
from md4_jax import mdlm_weights
from md4_jax.training import run_config
from md4_jax.training import train_state

SOURCES = ("mdlm",)
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                              "owt_mdlm.py")


def converted_config(base: ml_collections.ConfigDict, a: mdlm_weights.Architecture,
                     scan_layers: bool) -> ml_collections.ConfigDict:
  """`base` (an mdlm_dit experiment) with the checkpoint's sizes; refuses a vocabulary the tokenizer lacks."""
  config = base.copy_and_resolve_references()
  config.unlock()  # the checkpoint's network fields join the experiment's
  if config.model.kind != "mdlm_dit":
    raise ValueError(f"--config must be an model.kind='mdlm_dit' experiment; got model.kind={config.model.kind!r}")
  info = data_lib.dataset_info(config.data)
  if a.vocab_size != info.vocab_size:
    raise ValueError(f"checkpoint vocabulary {a.vocab_size + 1} (mask included) does not match the tokenizer of "
                     f"data {config.data.name!r}: V = {info.vocab_size} + mask = {info.vocab_size + 1}")
  config.model.size = None
  config.model.network.update(num_layers=a.num_layers, num_heads=a.num_heads, width=a.width, cond_dim=a.cond_dim,
                              mlp_ratio=a.mlp_ratio, time_conditioning=a.time_conditioning,
                              scan_layers=scan_layers)
  if a.model_length is not None and "seq_len" in config.data:
    config.data.seq_len = a.model_length
  config.mesh.data, config.mesh.fsdp = -1, 1
  return config


def stack_blocks(params: dict, num_layers: int) -> dict:
  """The unrolled tree's blocks {0: ..., 1: ...} -> one tree with a leading [num_layers] axis (scan_layers)."""
  blocks = [params["blocks"][i] for i in range(num_layers)]
  return dict(params, blocks=jax.tree.map(lambda *layers: np.stack(layers), *blocks))


def convert(source: str, input_path: str, output: str, config: ml_collections.ConfigDict | None = None, *,
            num_heads: int | None = None, time_conditioning: bool | None = None, scan_layers: bool = False) -> str:
  """Writes the workdir `output` from the checkpoint `input_path` (config: the mdlm_dit experiment its config starts
  from, default DEFAULT_CONFIG); returns a one-line description."""
  if source not in SOURCES:
    raise ValueError(f"unknown --source {source!r}; valid: {', '.join(SOURCES)}")
  if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
    raise ValueError(f"--output {output!r} exists and is not an empty folder; converted weights go to a new workdir")
  loaded = mdlm_weights.load(input_path, num_heads=num_heads, time_conditioning=time_conditioning)
  return write_workdir(loaded, output, config, scan_layers=scan_layers)


def write_workdir(loaded: mdlm_weights.Loaded, output: str, config: ml_collections.ConfigDict | None = None, *,
                  scan_layers: bool = False) -> str:
  """config.json and a step-0 checkpoint of `loaded` in `output` (checks the vocabulary first)."""
  a = loaded.architecture
  config = converted_config(config or config_base.load_experiment(DEFAULT_CONFIG), a, scan_layers)
  exp = experiment_lib.build(config, inference=True)
  params = {"network": stack_blocks(loaded.params, a.num_layers) if scan_layers else loaded.params}
  expected = jax.tree.map(lambda a: a.shape, exp.abstract_state.params)
  found = jax.tree.map(lambda a: a.shape, params)
  if expected != found:  # the key map and the network disagree: a bug here, not in the checkpoint
    raise ValueError(f"converted parameter tree does not fit model.kind='mdlm_dit': expected {expected}, got {found}")
  state = train_state.create(jax.tree.map(np.asarray, params), exp.tx, config.seed)
  state = jax.device_put(state, exp.state_sharding)
  run_config.save(output, config)
  manager = checkpoint.make_manager(output, config.train)
  checkpoint.save(manager, 0, state, {}, checkpoint.fingerprint(config))
  manager.wait_until_finished()
  manager.close()
  return (f"{loaded.description} -> {output}: mdlm_dit {a.num_layers} x {a.width}, {a.num_heads} heads, cond_dim "
          f"{a.cond_dim}, V = {a.vocab_size} + mask, time_conditioning={a.time_conditioning}, "
          f"{sum(x.size for x in jax.tree.leaves(params)):,} parameters")


def define_flags(f) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("source", "mdlm", f"checkpoint family; valid: {', '.join(SOURCES)}", flag_values=f)
  flags.DEFINE_string("input", None, "HF folder, .safetensors, .bin or Lightning .ckpt", flag_values=f)
  flags.DEFINE_string("output", None, "new workdir (absent or empty)", flag_values=f)
  flags.DEFINE_integer("num_heads", None, "attention heads (default: the HF config's n_heads, else width // 64)",
                       flag_values=f)
  flags.DEFINE_bool("time_conditioning", None, "default: the HF config's, else False (MDLM's OWT model)",
                    flag_values=f)
  flags.DEFINE_bool("scan_layers", False, "write the blocks stacked (model.network.scan_layers=True)",
                    flag_values=f)


def main(argv: list[str]) -> int:
  """`python -m md4_jax.convert` (argv as sys.argv; --config: the mdlm_dit experiment the workdir's config starts
  from, default experiments/owt_mdlm.py); returns the exit code."""
  return cli.run(argv, __doc__, define_flags, _convert, need_workdir=False, default_config=DEFAULT_CONFIG,
                 workdir_help="unused (the new workdir is --output)")


def _convert(f, config: ml_collections.ConfigDict) -> int | None:
  missing = [f"--{name}" for name in ("input", "output") if f[name].value is None]
  if missing:
    return cli.usage_error(f"missing {', '.join(missing)} (see --help)")
  print(convert(f.source, f.input, f.output, config, num_heads=f.num_heads, time_conditioning=f.time_conditioning,
                scan_layers=f.scan_layers), flush=True)


run = cli.entry(main)  # console entry point (md4-convert) and `python -m md4_jax.convert`


if __name__ == "__main__":
  run()
