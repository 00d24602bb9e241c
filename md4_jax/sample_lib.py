"""Sampling from a checkpoint: the library behind `md4_jax.sample_ancestral`, `md4_jax.sample_remdm` and
`md4_jax.scaling_report`.

    config = resolve_config("experiments/demo.py", overrides={}, sampler="remdm")
    restored = restore_ema(config, workdir)                 # EMA params only, onto the devices at hand
    z_init = z_init_from_prompts(None, restored.exp.info, num_samples=16)
    tokens, stats = generate(restored, config.sampler, z_init, jax.random.key(0), batch_size=16)
    write_samples("/tmp/out/samples", tokens, restored.exp.info)

The two binaries differ only in the sampler they start from (`default_sampler`); command-line overrides
(`--config.sampler.num_steps=...`) apply on top of it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from md4_jax import config_base
from md4_jax import data as data_lib
from md4_jax import distributed
from md4_jax import experiment as experiment_lib
from md4_jax import sample_writer
from md4_jax import sampling
from md4_jax import sharding as sharding_lib
from md4_jax.data import DataInfo

MODEL_SAMPLER_FIELDS = ("schedule", "eps")  # describe the model, not the sampler: kept from the experiment


def default_sampler(experiment_sampler: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The sampler config a binary whose default sampler is `name` starts from, before command-line overrides.

  The experiment's own `config.sampler` when it already is sampler `name` (its tuned T, grid, top-p); otherwise
  `sampling.default_config(name)` with the experiment's schedule and eps.
  """
  if experiment_sampler.name == name:
    return experiment_sampler
  config = sampling.default_config(name)
  for field in MODEL_SAMPLER_FIELDS:
    config[field] = experiment_sampler[field]
  return config


def resolve_config(path: str, overrides: dict[str, Any], sampler: str) -> ml_collections.ConfigDict:
  """The experiment config at `path` ('file.py' or 'file.py:arg') set up for sampling, then `overrides`.

  Before the overrides (dotted paths -> values, as `--config.a.b=v` gives them): the sampler becomes
  `default_sampler(config.sampler, sampler)` and the mesh spreads the batch over every present device
  (mesh.data = -1, mesh.fsdp = 1: parameters replicated). Returns a locked config.
  """
  file_path, _, arg = path.partition(":")
  config = config_base.load_experiment(file_path, arg or None)
  config.sampler = default_sampler(config.sampler, sampler)
  config.mesh.data, config.mesh.fsdp = -1, 1
  config.update_from_flattened_dict(dict(overrides))
  config.lock()
  sampling.validate_config(config.sampler)  # fail before any checkpoint is read
  return config


Restored = experiment_lib.Restored
restore_ema = experiment_lib.restore_ema


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


def _to_host(x: jax.Array) -> np.ndarray:
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def generate(restored: Restored, sampler_config: ml_collections.ConfigDict, z_init: np.ndarray, key: jax.Array, *,
             batch_size: int, label: int | None = None, progress: str | None = None) -> tuple[np.ndarray, dict]:
  """Fills the masks of z_init int [N, *data_shape] in batches of `batch_size` split over the mesh.

  Batch i uses key fold_in(key, i); the last batch is padded with masks, so one program serves all. The
  same seed, batch size and sampler config give the same samples on any number of devices.
  label: class id for every sample (class-conditional image models), None = unconditional.
  progress: a name; if given, one line per batch goes to stderr.
  Returns (tokens int32 [N, *data_shape], {'nfe': denoiser calls per batch (mean), 'wall_s', 'batches'}).
  """
  exp = restored.exp
  objective = exp.config.diffusion.objective
  sample_writer.check_samplable(objective, sampler_config.name)
  _check_batch_size(batch_size, exp.mesh.size)
  if label is not None and not 0 <= label < exp.info.num_classes:
    raise ValueError(f"label={label} is not a class of this dataset; valid: "
                     + (f"0..{exp.info.num_classes - 1}" if exp.info.num_classes else "none (unconditional data)"))
  sampling.validate_config(sampler_config)
  batch_sharding = sharding_lib.batch_sharding(exp.mesh)
  place = lambda a: jax.make_array_from_callback(a.shape, batch_sharding, lambda index: a[index])
  cond = None if label is None else place(np.full((batch_size,), label, np.int32))
  denoise_fn, head_fn = sample_writer.model_denoiser(exp.graphdef, restored.params, objective, cond)
  genmd4_w = nnx.merge(exp.graphdef, restored.params).genmd4_w
  num_samples, mask_id = z_init.shape[0], exp.info.vocab_size
  out, nfe, start = [], [], time.time()
  with jax.set_mesh(exp.mesh):
    for index, first in enumerate(range(0, num_samples, batch_size)):
      chunk = np.asarray(z_init[first:first + batch_size], np.int32)
      padded = np.concatenate([chunk, np.full((batch_size - len(chunk),) + chunk.shape[1:], mask_id, np.int32)])
      tokens, stats = sample_writer.draw(objective, denoise_fn, jax.random.fold_in(key, index), place(padded),
                                         sampler_config, genmd4_w=genmd4_w, head_fn=head_fn)
      out.append(_to_host(tokens)[:len(chunk)])
      nfe.append(int(stats["nfe"]))
      if progress and jax.process_index() == 0:
        done = first + len(chunk)
        print(f"{progress}: batch {index + 1}/{-(-num_samples // batch_size)} | {done}/{num_samples} samples | "
              f"{time.time() - start:.1f}s | {nfe[-1]} denoiser calls", file=sys.stderr, flush=True)
  return np.concatenate(out), {"nfe": float(np.mean(nfe)), "wall_s": time.time() - start, "batches": len(nfe)}


def _escape(text: str) -> str:
  return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def image_grid(images: np.ndarray, min_size: int = 32) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 [rows (H + 1) + 1, cols (W + 1) + 1, C] grid (1-px black lines), ceil(sqrt N)
  columns, each image scaled up by an integer factor to at least `min_size` pixels (nearest neighbour)."""
  n, h, w, c = images.shape
  scale = max(1, -(-min_size // max(h, w)))
  images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  h, w = h * scale, w * scale
  cols = math.ceil(math.sqrt(n))
  rows = -(-n // cols)
  grid = np.zeros((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.uint8)
  for i, image in enumerate(images):
    r, q = divmod(i, cols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = image
  return grid


def output_paths(base: str, info: DataInfo) -> list[str]:
  """Files `write_samples` writes: base.txt + base.jsonl (text) or base.png + base.jsonl (images)."""
  return [base + (".txt" if len(info.data_shape) == 1 else ".png"), base + ".jsonl"]


def write_samples(base: str, tokens: np.ndarray, info: DataInfo) -> list[str]:
  """Writes samples int [N, *data_shape] (see `output_paths`); returns the paths.

  Text: one decoded sample per line (a newline inside a sample is written as \\n; the .jsonl holds the exact
  text); images: a PNG grid (pillow). base.jsonl: {"index", "tokens" (nested as data_shape), "text"?} per
  sample. Everything is written under temporary names and renamed at the end, so a failure never leaves a
  complete-looking file.
  """
  paths = output_paths(base, info)
  temporary = [f"{p}.tmp{os.getpid()}" for p in paths]
  os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
  decoded = info.decode(tokens)
  try:
    if len(info.data_shape) == 1:
      texts = [str(t) for t in np.asarray(decoded).reshape(-1)]
      with open(temporary[0], "w", encoding="utf-8") as f:
        f.write("".join(_escape(t) + "\n" for t in texts))
    else:
      from PIL import Image  # pylint: disable=g-import-not-at-top
      grid = image_grid(np.asarray(decoded, np.uint8))
      Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(temporary[0], format="PNG")
      texts = None
    with open(temporary[1], "w", encoding="utf-8") as f:
      for i, row in enumerate(np.asarray(tokens)):
        record = {"index": i, "tokens": row.tolist()}
        if texts is not None:
          record["text"] = texts[i]
        f.write(json.dumps(record) + "\n")
    for src, dst in zip(temporary, paths):
      os.replace(src, dst)
  finally:
    for src in temporary:
      if os.path.exists(src):
        os.remove(src)
  return paths


# --- command line, shared by sample_ancestral, sample_remdm and scaling_report --------------------------------


def define_common_flags(flag_values, argv: list[str]) -> None:
  """--config (with --config.a.b=v overrides, found in `argv`), --workdir, --step, --seed, --batch_size."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "experiment config file (experiments/*.py) the checkpoint was "
                                  "trained with; --config.sampler.x=v overrides the sampler", flag_values=flag_values,
                                  lock_config=True, sys_argv=list(argv))
  flags.DEFINE_string("workdir", None, "training workdir holding checkpoints/", flag_values=flag_values)
  flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)", flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 0, "global batch, a multiple of the device count; 0 = num_samples rounded up "
                       "to it, at most 64 per device", flag_values=flag_values)


def parse_flags(flag_values, argv: list[str], doc: str) -> int | None:
  """Parses argv into `flag_values`; returns an exit code to stop with (help shown, or a usage error), else None."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if any(a in ("-h", "--help", "-help") for a in argv[1:]):
    print(doc + "\n" + flag_values.get_help(), flush=True)
    return 0
  try:
    rest = flag_values(argv)
  except flags.Error as error:
    print(f"usage error: {error}\n(see --help)", file=sys.stderr, flush=True)
    return 2
  except (AttributeError, KeyError) as error:  # config_flags: an override of a field the config lacks
    print(f"usage error: a --config override names the field {error}, which the experiment config does not have "
          "(configs are locked; see the experiment file)", file=sys.stderr, flush=True)
    return 2
  missing = [f"--{name}" for name in ("config", "workdir") if flag_values[name].value is None]
  if missing or len(rest) > 1:
    problem = f"missing {', '.join(missing)}" if missing else f"unexpected arguments {rest[1:]}"
    print(f"usage error: {problem} (see --help)", file=sys.stderr, flush=True)
    return 2
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # Orbax logs every restore at INFO / WARNING
  distributed.initialize()
  return None


def flag_config(flag_values, sampler: str) -> ml_collections.ConfigDict:
  """`resolve_config` of the parsed --config flag and its --config.a.b=v overrides."""
  return resolve_config(flag_values["config"].config_filename, flag_values["config"].override_values, sampler)


def auto_batch_size(batch_size: int, num_samples: int, devices: int) -> int:
  """batch_size (checked), or for 0: num_samples rounded up to a multiple of `devices`, at most 64 per device."""
  if batch_size == 0:
    return min(-(-num_samples // devices), 64) * devices
  _check_batch_size(batch_size, devices)
  return batch_size


def _check_batch_size(batch_size: int, devices: int) -> None:
  if batch_size < 1 or batch_size % devices:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of the {devices} devices the samples are "
                     "spread over (or 0: automatic)")


def sampler_tag(sampler_config: ml_collections.ConfigDict) -> str:
  """'ancestral', 'remdm-loop', ... for file names and tables."""
  return f"remdm-{sampler_config.remdm.strategy}" if sampler_config.name == "remdm" else sampler_config.name


def main(argv: list[str], sampler: str) -> int:
  """A sampling binary whose default sampler is `sampler` (argv as sys.argv); returns the exit code."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  define_common_flags(flag_values, argv)
  flags.DEFINE_integer("num_samples", 16, "number of samples", flag_values=flag_values)
  flags.DEFINE_string("output", None, "output path without extension (default: "
                      "WORKDIR/samples/<sampler>_step<step>_seed<seed>)", flag_values=flag_values)
  flags.DEFINE_string("prefix_file", None, "text file, one prompt per line (tokenised by the dataset); sample i "
                      "continues prompt i mod #prompts", flag_values=flag_values)
  flags.DEFINE_string("infill_file", None, "jsonl, one list of prod(data_shape) token ids per line, -1 = generate; "
                      "sample i fills line i mod #lines", flag_values=flag_values)
  flags.DEFINE_integer("label", None, "class label for every sample (class-conditional image models)",
                       flag_values=flag_values)
  doc = f"python -m md4_jax.sample_{sampler} --config experiments/<name>.py --workdir DIR [flags]"
  code = parse_flags(flag_values, argv, doc)
  if code is not None:
    return code
  f = flag_values
  try:
    config = flag_config(f, sampler)
    info = data_lib.dataset_info(config.data)
    if f.prefix_file and f.infill_file:
      raise ValueError("give --prefix_file or --infill_file, not both")
    prompts = (read_prefixes(f.prefix_file, info) if f.prefix_file else
               read_infills(f.infill_file, info) if f.infill_file else None)
    z_init = z_init_from_prompts(prompts, info, f.num_samples)
    if len(info.data_shape) > 1:
      import PIL  # pylint: disable=g-import-not-at-top,unused-import  # fail before sampling, not after
    batch_size = auto_batch_size(f.batch_size, f.num_samples, sharding_lib.make_mesh(config.mesh).size)
    restored = restore_ema(config, f.workdir, f.step)
    tag = sampler_tag(config.sampler)
    base = f.output or os.path.join(f.workdir, "samples", f"{tag}_step{restored.step}_seed{f.seed}")
    tokens, stats = generate(restored, config.sampler, z_init, jax.random.key(f.seed), batch_size=batch_size,
                             label=f.label, progress=tag)
    if jax.process_index() == 0:
      paths = write_samples(base, tokens, info)
      print(f"{tag}: {len(tokens)} samples from checkpoint {restored.step} ({stats['nfe']:.0f} denoiser calls per "
            f"batch, {stats['wall_s']:.1f}s on {restored.exp.mesh.size} device(s)) -> {', '.join(paths)}",
            flush=True)
  except (ValueError, OSError, ImportError) as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    return 1
  return 0
