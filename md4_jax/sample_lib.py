"""The sampling binaries `md4_jax.sample_ancestral` and `md4_jax.sample_remdm`: their config, prompts and CLI.
Samples are drawn by md4_jax.generate.

    config = prepare(run_config.load(workdir), sampler="remdm")   # the binary's default sampler, all devices
    z_init = z_init_from_prompts(read_prefixes("prompts.txt", info), info, num_samples=16)

The two binaries differ only in the sampler they start from (`prepare`); command-line overrides
(`--config.sampler.num_steps=...`) apply on top of it.
"""

from __future__ import annotations

import json
import math
import os

import jax
import ml_collections
import numpy as np

from md4_jax import cli
from md4_jax import data as data_lib
from md4_jax.training import experiment
from md4_jax import generate
from md4_jax import sampling
from md4_jax.training import sharding as sharding_lib
from md4_jax.data import DataInfo

def prepare(config: ml_collections.ConfigDict, sampler: str) -> ml_collections.ConfigDict:
  """`config` set up for a binary whose default sampler is `sampler`, before command-line overrides.

  The sampler stays the experiment's own `config.sampler` when it already is sampler `sampler` (its tuned T, grid,
  top-p); otherwise it becomes `sampling.default_config(sampler)` with the experiment's schedule and eps (they
  describe the model, not the sampler). The mesh spreads the batch over every present device (mesh.data = -1,
  mesh.fsdp = 1: parameters replicated).
  """
  if config.sampler.name != sampler:
    default = sampling.default_config(sampler)
    default.update(schedule=config.sampler.schedule, eps=config.sampler.eps)
    config.sampler = default
  config.mesh.data, config.mesh.fsdp = -1, 1
  return config


def read_prefixes(path: str, info: DataInfo) -> list[np.ndarray]:
  """One prompt per line of the text file `path`, tokenised by the dataset -> rows int32 [L] (prefix, then V)."""
  if info.encode is None:
    raise ValueError(f"this dataset has no text tokenizer (data_shape {info.data_shape}); give prompts as token "
                     "ids with --infill_file")
  length = math.prod(info.data_shape)
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  if not lines:
    raise ValueError(f"prefix file {path!r} is empty; write one prompt per line")
  rows = []
  for number, line in enumerate(lines, 1):
    ids = np.asarray(info.encode(line), np.int32)
    if ids.size > length:
      raise ValueError(f"{path}:{number}: the prefix has {ids.size} tokens, more than the sequence length "
                       f"L={length}; shorten it or sample longer sequences")
    rows.append(np.concatenate([ids, np.full(length - ids.size, info.vocab_size, np.int32)]))
  return rows


def read_infills(path: str, info: DataInfo) -> list[np.ndarray]:
  """One JSON list of token ids per line of `path` (nested as data_shape or flat, prod(data_shape) ids); -1 or
  the mask id V marks a position to generate -> rows int32 [prod(data_shape)] with V there."""
  length, vocab_size = math.prod(info.data_shape), info.vocab_size
  rows = []
  with open(path, encoding="utf-8") as f:
    lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
  if not lines:
    raise ValueError(f"infill file {path!r} is empty; write one JSON list of token ids per line")
  for number, line in lines:
    try:
      ids = np.asarray(json.loads(line))
    except ValueError as error:  # bad JSON or ragged lists
      raise ValueError(f"{path}:{number}: not a JSON list of token ids ({error})") from error
    if ids.size != length or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
      raise ValueError(f"{path}:{number}: need {length} integer token ids (data_shape {info.data_shape}); got "
                       f"{ids.size} values of type {ids.dtype}")
    ids = ids.reshape(-1).astype(np.int64)
    bad = ids[(ids < -1) | (ids > vocab_size)]
    if bad.size:
      raise ValueError(f"{path}:{number}: token id {int(bad[0])} is outside the vocabulary; valid: 0..{vocab_size - 1}"
                       f", or -1 / {vocab_size} (the mask id) for a position to generate")
    rows.append(np.where(ids == -1, vocab_size, ids).astype(np.int32))
  return rows


def z_init_from_prompts(prompts: list[np.ndarray] | None, info: DataInfo, num_samples: int) -> np.ndarray:
  """z_init int32 [num_samples, *data_shape]: all masks, or sample i fixed by prompt i mod len(prompts)."""
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1; got {num_samples}")
  if not prompts:
    return np.full((num_samples,) + tuple(info.data_shape), info.vocab_size, np.int32)
  rows = np.stack(prompts)[np.arange(num_samples) % len(prompts)]  # [N, L]
  return rows.reshape((num_samples,) + tuple(info.data_shape))


def define_flags(flag_values) -> None:
  """The flags of the sampling binaries besides --workdir and --config."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)", flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 0, "global batch, a multiple of the device count; 0 = num_samples rounded up "
                       "to it, at most 64 per device", flag_values=flag_values)
  flags.DEFINE_integer("num_samples", 16, "number of samples", flag_values=flag_values)
  flags.DEFINE_string("output", None, "output path without extension (default: "
                      "WORKDIR/samples/<sampler>_step<step>_seed<seed>)", flag_values=flag_values)
  flags.DEFINE_string("prefix_file", None, "text file, one prompt per line (tokenised by the dataset); sample i "
                      "continues prompt i mod #prompts", flag_values=flag_values)
  flags.DEFINE_string("infill_file", None, "jsonl, one list of prod(data_shape) token ids per line, -1 = generate; "
                      "sample i fills line i mod #lines", flag_values=flag_values)
  flags.DEFINE_integer("label", None, "class label for every sample (class-conditional image models)",
                       flag_values=flag_values)


def main(argv: list[str], sampler: str) -> int:
  """A sampling binary whose default sampler is `sampler` (argv as sys.argv); returns the exit code."""
  doc = f"python -m md4_jax.sample_{sampler} --workdir DIR [--config experiments/<name>.py] [flags]"
  return cli.run(argv, doc, define_flags, _sample, prepare=lambda config: prepare(config, sampler))


def _sample(f, config: ml_collections.ConfigDict) -> None:
  """Draws and writes the samples the flags `f` ask for."""
  sampling.validate_config(config.sampler)  # fail before any checkpoint is read
  info = data_lib.dataset_info(config.data)
  if f.prefix_file and f.infill_file:
    raise ValueError("give --prefix_file or --infill_file, not both")
  prompts = (read_prefixes(f.prefix_file, info) if f.prefix_file else
             read_infills(f.infill_file, info) if f.infill_file else None)
  z_init = z_init_from_prompts(prompts, info, f.num_samples)
  if len(info.data_shape) > 1:
    import PIL  # pylint: disable=g-import-not-at-top,unused-import  # fail before sampling, not after
  batch_size = generate.auto_batch_size(f.batch_size, f.num_samples, sharding_lib.make_mesh(config.mesh).size)
  restored = experiment.restore_ema(config, f.workdir, f.step)
  tag = f"remdm-{config.sampler.remdm.strategy}" if config.sampler.name == "remdm" else config.sampler.name
  base = f.output or os.path.join(f.workdir, "samples", f"{tag}_step{restored.step}_seed{f.seed}")
  tokens, stats = generate.generate(restored.exp.graphdef, restored.params, config.sampler, z_init,
                                    generate.seed_key(f.seed), mesh=restored.exp.mesh, batch_size=batch_size,
                                    label=f.label, progress=tag)
  if jax.process_index() == 0:
    paths = generate.write_samples(base, tokens, info)
    print(f"{tag}: {len(tokens)} samples from checkpoint {restored.step} ({stats['nfe']:.0f} denoiser calls per "
          f"batch, {stats['wall_s']:.1f}s on {restored.exp.mesh.size} device(s)) -> {', '.join(paths)}",
          flush=True)
