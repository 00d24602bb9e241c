"""Where samples are drawn: one `generate` for every caller (the training hook, sample_ancestral / sample_remdm,
scaling_report, molecules) and one writer of samples.

    denoise_fn = load_denoiser(workdir)          # EMA parameters of a run -> denoise_fn(z_t, t)
    tokens, stats = generate(graphdef, params, sampler_config, z_init, key, mesh=mesh, label=3)
    write_samples("/tmp/out/samples", tokens, info)  # .txt + .jsonl (text) or .png + .jsonl (images)

`generate` fills the masks (id V) of z_init [N, *data_shape] in padded batches split over the mesh. Example n gets
its own key fold_in(key, n), whatever the batch size or device count (masked models; a uniform-noise model's
batch i uses fold_in(key, i)). It passes a GenMD4 model's learned exponents to the sampler, evaluates the
vocabulary head only at drawn positions where the objective allows it, and applies labels and guides (D-CFG,
D-CBG). How an objective is sampled comes from md4_jax.objectives.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time

import jax
import ml_collections
import numpy as np
from flax import nnx

from md4_jax.training import atomic
from md4_jax import guidance
from md4_jax import objectives
from md4_jax.training import run_config
from md4_jax import sampling
from md4_jax.training import sharding as sharding_lib
from md4_jax import udlm
from md4_jax.data import DataInfo

# --- the model as the samplers see it (parameters traced, not baked in as constants) -------------------------


@functools.lru_cache(maxsize=None)
def _model_fns(graphdef):
  """One set of function objects per graphdef, so repeated sampling reuses the compiled loop."""
  def log_probs(params, cond, z_t, t):
    return nnx.merge(graphdef, params).log_probs(z_t, t, cond)

  def features(params, cond, z_t, t):
    return nnx.merge(graphdef, params).head_features(z_t, t, cond)

  def head(params, rows):
    return nnx.merge(graphdef, params).head_log_probs(rows)

  def classify(params, z_t, t):
    return nnx.merge(graphdef, params).classifier_log_probs(z_t, t)
  return log_probs, features, head, classify


def denoiser(graphdef, params, cond: jax.Array | None = None) -> jax.tree_util.Partial:
  """denoise_fn(z_t int32 [B, *S], t float32 [B]) -> log-probs float32 [B, *S, V] of the model, with class labels
  cond int32 [B] (None = unconditional)."""
  return jax.tree_util.Partial(_model_fns(graphdef)[0], params, cond)


def factored_denoiser(graphdef, params, cond: jax.Array | None = None):
  """(features_fn, head_fn) for `sampling.sample(features_fn, ..., head_fn=head_fn)`: the vocabulary head runs
  only where tokens are drawn. None for networks without `head_features` (the U-Nets)."""
  if not hasattr(nnx.merge(graphdef, params).network, "head_features"):
    return None
  _, features, head, _ = _model_fns(graphdef)
  return jax.tree_util.Partial(features, params, cond), jax.tree_util.Partial(head, params)


def load_denoiser(workdir: str, step: int | None = None) -> jax.tree_util.Partial:
  """The EMA denoiser of checkpoint `step` (None: the latest) of the run in `workdir` (its config.json).

  Returns denoise_fn(z_t, t): z_t int32 [B, *S] (mask id V), t float32 [B] -> float32 log-probabilities over the
  V data tokens [B, *S, V], the exact function the samplers receive; parameters replicated over every device.
  """
  from md4_jax.training import experiment  # pylint: disable=g-import-not-at-top
  config = run_config.load(workdir)
  if config is None:
    raise ValueError(f"{run_config.path(workdir)} is missing: {workdir!r} is not a run written by "
                     "md4_jax.train (or predates config.json; restore it with its --config instead)")
  config.mesh.data, config.mesh.fsdp = -1, 1
  restored = experiment.restore_ema(config, workdir, step)
  return denoiser(restored.exp.graphdef, restored.params)


# --- generation ----------------------------------------------------------------------------------------------

GUIDES = ("none", "cfg", "cbg")


@dataclasses.dataclass(frozen=True)
class Guide:
  """How samples are steered toward the `label` of `generate`: 'none', 'cfg' (D-CFG of a label-conditioned model:
  log p = gamma log p(x | y) + (1 - gamma) log p(x)) or 'cbg' (D-CBG with a noisy classifier, `classifier` = its
  (graphdef, params)), with strength gamma."""
  kind: str = "none"
  gamma: float = 0.0
  classifier: tuple | None = None

  def __post_init__(self):
    if self.kind not in GUIDES:
      raise ValueError(f"unknown guide {self.kind!r}; valid: {', '.join(GUIDES)}")
    if self.kind == "cbg" and self.classifier is None:
      raise ValueError("a 'cbg' guide needs classifier=(graphdef, params) of a 'classifier' run")


def sampler_functions(graphdef, params, objective: objectives.Objective, cond: jax.Array | None, guide: Guide,
                      label: int | None) -> dict:
  """The keyword arguments of the sampler call besides key, z_init and config: denoise_fn, and where they apply
  head_fn (the head at drawn positions), guide (D-CBG rows) and genmd4_w."""
  w = nnx.merge(graphdef, params).genmd4_w
  denoise_fn = denoiser(graphdef, params, cond)  # cond is None under 'cbg'
  if guide.kind == "cfg" and guide.gamma != 1:  # gamma = 1 is the conditional model itself: one call per step
    return {"denoise_fn": guidance.cfg_denoiser(denoise_fn, denoiser(graphdef, params), guide.gamma), "genmd4_w": w}
  out = {}
  if guide.kind == "cbg":  # the classifier's log p(y | z_t, t) [B, C] as a function of (z_t [B, L], t [B])
    classify = jax.tree_util.Partial(_model_fns(guide.classifier[0])[3], guide.classifier[1])
    if w is not None:  # the sampler's D-CBG rows do not combine with genmd4_w
      return {"denoise_fn": guidance.cbg_denoiser(denoise_fn, classify, label, guide.gamma), "genmd4_w": w}
    out["guide"] = guidance.cbg_guide(classify, label, guide.gamma)
  factored = factored_denoiser(graphdef, params, cond) if objective.head_at_drawn else None
  if factored:
    return {**out, "denoise_fn": factored[0], "head_fn": factored[1]}
  return {**out, "denoise_fn": denoise_fn, "genmd4_w": w}


def auto_batch_size(batch_size: int, num_samples: int, devices: int) -> int:
  """batch_size (checked), or for 0: num_samples rounded up to a multiple of `devices`, at most 64 per device."""
  if batch_size == 0:
    return min(-(-num_samples // devices), 64) * devices
  if batch_size < 1 or batch_size % devices:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of the {devices} devices the samples are "
                     "spread over (or 0: automatic)")
  return batch_size


def _to_host(x: jax.Array) -> np.ndarray:
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sample_batch(objective: objectives.Objective, functions: dict, key: jax.Array, first: int, z_t: jax.Array,
                 sampler_config: ml_collections.ConfigDict, key_sharding=None) -> tuple[jax.Array, dict]:
  """One batch of `generate`: z_t [B, *S] holds examples first .. first + B - 1 -> (tokens [B, *S], stats).

  Example n draws with fold_in(key, n) (the keys placed by key_sharding), whatever the batch it falls in; a
  uniform-noise model's batch i = first // B with fold_in(key, i). functions: from `sampler_functions`.
  """
  if objective.sampler == objectives.UNIFORM:
    tokens = udlm.sample(functions["denoise_fn"], jax.random.fold_in(key, first // z_t.shape[0]), z_t, sampler_config)
    return tokens, {"nfe": sampler_config.num_steps}
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, np.arange(first, first + z_t.shape[0]))  # [B]
  if key_sharding is not None:
    keys = jax.device_put(keys, key_sharding)
  return sampling.sample(key=keys, z_init=z_t, config=sampler_config, return_stats=True, **functions)


def generate(graphdef, params, sampler_config: ml_collections.ConfigDict, z_init: np.ndarray, key: jax.Array, *,
             mesh: jax.sharding.Mesh, batch_size: int = 0, label: int | None = None, guide: Guide = Guide(),
             progress: str | None = None) -> tuple[np.ndarray, dict]:
  """Fills the masks of z_init int [N, *data_shape] with the model `graphdef, params` (module docstring).

  batch_size: a multiple of mesh.size (0: automatic); the last batch is padded with masks.
  label: class id y for every sample: the condition of a label-conditioned model (guide 'none'), or the target
  of guide 'cfg' / 'cbg'. None = unconditional.
  progress: a name; if given, one line per batch goes to stderr.
  Returns (tokens int32 [N, *data_shape], {'nfe': denoiser calls per batch (mean), 'wall_s', 'batches'}).
  """
  model = nnx.merge(graphdef, params)
  objective = objectives.get(model.diffusion_config.objective)
  objective.check_samplable(sampler_config.name)  # the config itself is validated by the sampler
  num_samples, mask_id = z_init.shape[0], model.vocab_size
  batch_size = auto_batch_size(batch_size, num_samples, mesh.size)
  if label is not None and not 0 <= label < model.num_classes:
    raise ValueError(f"label={label} is not a class of this model; valid: "
                     + (f"0..{model.num_classes - 1}" if model.num_classes else "none (unconditional data)"))
  if guide.kind != "none" and label is None:
    raise ValueError(f"guide {guide.kind!r} steers toward a label; pass label=")
  if objective.sampler == objectives.UNIFORM and guide.kind != "none":
    raise ValueError(f"guides apply to masked models, not to a {objective.name!r} model")
  batch_sharding = sharding_lib.batch_sharding(mesh)
  place = lambda a: jax.make_array_from_callback(a.shape, batch_sharding, lambda index: a[index])
  cond = None if label is None or guide.kind == "cbg" else place(np.full((batch_size,), label, np.int32))
  functions = sampler_functions(graphdef, params, objective, cond, guide, label)
  out, nfe, start = [], [], time.time()
  with jax.set_mesh(mesh):
    for index, first in enumerate(range(0, num_samples, batch_size)):
      chunk = np.asarray(z_init[first:first + batch_size], np.int32)
      padded = place(np.concatenate([chunk, np.full((batch_size - len(chunk),) + chunk.shape[1:], mask_id,
                                                     np.int32)]))
      tokens, stats = sample_batch(objective, functions, key, first, padded, sampler_config, batch_sharding)
      out.append(_to_host(tokens)[:len(chunk)])
      nfe.append(int(stats["nfe"]))
      if progress and jax.process_index() == 0:
        done = first + len(chunk)
        print(f"{progress}: batch {index + 1}/{-(-num_samples // batch_size)} | {done}/{num_samples} samples | "
              f"{time.time() - start:.1f}s | {nfe[-1]} denoiser calls", file=sys.stderr, flush=True)
  return np.concatenate(out), {"nfe": float(np.mean(nfe)), "wall_s": time.time() - start, "batches": len(nfe)}


def seed_key(seed: int) -> jax.Array:
  """The key of a binary's --seed: fold_in(key(seed), 0), batch 0's key before example keys existed, so a seed
  gives the samples it gave before."""
  return jax.random.fold_in(jax.random.key(seed), 0)


# --- the one writer of samples -------------------------------------------------------------------------------


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


def write_samples(base: str, tokens: np.ndarray, info: DataInfo) -> list[str]:
  """Writes samples int [N, *data_shape] to base.txt + base.jsonl (text) or base.png + base.jsonl (images), each
  file atomically; returns the paths.

  Text: one decoded sample per line (a newline inside a sample is written as \\n; the .jsonl holds the exact
  text); images: a PNG grid (pillow). base.jsonl: {"index", "tokens" (nested as data_shape), "text"?} per sample,
  written last, so a complete .jsonl means a complete pair.
  """
  paths = [base + (".txt" if len(info.data_shape) == 1 else ".png"), base + ".jsonl"]
  os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
  decoded = info.decode(tokens)
  texts = None
  if len(info.data_shape) == 1:
    texts = [str(t) for t in np.asarray(decoded).reshape(-1)]
    atomic.write(paths[0], "".join(_escape(t) + "\n" for t in texts))
  else:
    import io  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    grid = image_grid(np.asarray(decoded, np.uint8))
    png = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(png, format="PNG")
    atomic.write(paths[0], png.getvalue())
  atomic.write(paths[1], "".join(
      json.dumps({"index": i, "tokens": row.tolist(), **({} if texts is None else {"text": texts[i]})}) + "\n"
      for i, row in enumerate(np.asarray(tokens))))
  return paths


def training_samples(graphdef, params, config: ml_collections.ConfigDict, info: DataInfo, mesh, workdir: str,
                     step: int) -> list[str] | None:
  """The training loop's periodic samples: config.train.num_samples from key fold_in(key(seed + 2), step),
  written by `write_samples` to WORKDIR/samples/step_<step> (none for a model that is not generative)."""
  if objectives.get(config.diffusion.objective).sampler is None:
    return None  # scorers and classifiers: nothing to sample
  key = jax.random.fold_in(jax.random.key(config.seed + 2), step)
  z_init = np.full((config.train.num_samples,) + tuple(info.data_shape), info.vocab_size, np.int32)
  tokens, _ = generate(graphdef, params, config.sampler, z_init, key, mesh=mesh)
  if jax.process_index() != 0:
    return None
  paths = write_samples(os.path.join(workdir, "samples", f"step_{step:08d}"), tokens, info)
  print(f"step {step} | samples written to {paths[0]}", flush=True)
  return paths
