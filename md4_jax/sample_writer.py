"""Samples from a model's (EMA) parameters with md4_jax.sampling, decoded and written to the workdir."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from md4_jax import sampling
from md4_jax import udlm

NOT_GENERATIVE = {"ar": "an 'ar' model (a Gen-PPL scorer)", "classifier": "a noisy property classifier (for D-CBG)"}


def check_samplable(objective: str, sampler_name: str) -> None:
  """ValueError unless a model trained with `objective` can be sampled by sampler `sampler_name`."""
  if objective in NOT_GENERATIVE:
    raise ValueError(f"this checkpoint is {NOT_GENERATIVE[objective]}; the diffusion samplers do not apply")
  if objective == "udlm" and sampler_name != "ancestral":
    raise ValueError(f"a 'udlm' (uniform-noise) model samples with sampler.name='ancestral' only; got "
                     f"{sampler_name!r}")


def draw(objective: str, denoise_fn, key: jax.Array, z_init: jax.Array, config: ml_collections.ConfigDict, *,
         genmd4_w: jax.Array | None = None, guide=None, head_fn=None) -> tuple[jax.Array, dict]:
  """(tokens int32 like z_init, {'nfe': denoiser calls}) from the sampler of a model trained with `objective`:
  md4_jax.sampling for masked models (with its `guide` and `head_fn`), udlm.sample (T calls) for uniform-noise
  ones."""
  check_samplable(objective, config.name)
  if objective == "udlm":
    if guide is not None or head_fn is not None:
      raise ValueError("guide and head_fn apply to masked models, not to a 'udlm' model")
    return udlm.sample(denoise_fn, key, z_init, config), {"nfe": jnp.asarray(config.num_steps)}
  return sampling.sample(denoise_fn, key, z_init, config, genmd4_w=genmd4_w, return_stats=True, guide=guide,
                         head_fn=head_fn)


def model_denoiser(graphdef, params, objective: str, cond: jax.Array | None = None):
  """(denoise_fn, head_fn) to sample a model: its features and vocabulary head evaluated only where tokens are
  drawn (`factored_denoiser`) where the sampler allows it (MD4 transformers), else (its denoiser, None)."""
  factored = factored_denoiser(graphdef, params, cond) if objective == "md4" else None
  return factored or (denoiser(graphdef, params, cond), None)


@functools.lru_cache(maxsize=None)
def _denoise_fn_of(graphdef):
  """One function object per graphdef, so repeated sampling reuses the compiled loop."""
  def denoise(params, cond, z_t, t):
    return nnx.merge(graphdef, params).log_probs(z_t, t, cond)
  return denoise


def denoiser(graphdef, params, cond: jax.Array | None = None) -> jax.tree_util.Partial:
  """The model's denoise_fn(z_t, t) with `params` (and class labels cond int [B], None = unconditional) traced,
  not baked in as constants."""
  return jax.tree_util.Partial(_denoise_fn_of(graphdef), params, cond)


@functools.lru_cache(maxsize=None)
def _factored_fns_of(graphdef):
  def features(params, cond, z_t, t):
    return nnx.merge(graphdef, params).head_features(z_t, t, cond)

  def head(params, rows):
    return nnx.merge(graphdef, params).head_log_probs(rows)
  return features, head


def factored_denoiser(graphdef, params, cond: jax.Array | None = None):
  """(features_fn, head_fn) for `sampling.sample(features_fn, ..., head_fn=head_fn)`: the vocabulary head runs
  only where tokens are drawn. None for networks without `head_features` (the U-Nets)."""
  if not hasattr(nnx.merge(graphdef, params).network, "head_features"):
    return None
  features, head = _factored_fns_of(graphdef)
  return jax.tree_util.Partial(features, params, cond), jax.tree_util.Partial(head, params)


@functools.lru_cache(maxsize=None)
def _classifier_fn_of(graphdef):
  def classify(params, z_t, t):
    return nnx.merge(graphdef, params).classifier_log_probs(z_t, t)
  return classify


def classifier(graphdef, params) -> jax.tree_util.Partial:
  """A 'classifier' model's log p(y | z_t, t) [B, C] as a function of (z_t [B, L], t [B]), params traced."""
  return jax.tree_util.Partial(_classifier_fn_of(graphdef), params)


def generate(graphdef, params, sampler_config: ml_collections.ConfigDict, z_init: np.ndarray,
             key: jax.Array) -> np.ndarray:
  """Fills the masks (id V) of z_init int [B, *data_shape]; returns int32 tokens of the same shape."""
  return np.asarray(draw_tokens(graphdef, params, sampler_config, z_init, key))


def draw_tokens(graphdef, params, sampler_config: ml_collections.ConfigDict, z_init: np.ndarray,
                key: jax.Array) -> jax.Array:
  """`generate` left on the devices: traceable, so jax.eval_shape checks a model and sampler config cheaply."""
  model = nnx.merge(graphdef, params)
  objective = model.diffusion_config.objective
  denoise_fn, head_fn = model_denoiser(graphdef, params, objective)
  tokens, _ = draw(objective, denoise_fn, key, jnp.asarray(z_init, jnp.int32), sampler_config,
                   genmd4_w=model.genmd4_w, head_fn=head_fn)
  return tokens


def training_sample_inputs(config, info, step: int) -> tuple[np.ndarray, jax.Array]:
  """(z_init int32 [num_samples, *data_shape], all masks; key) of the samples written at training step `step`."""
  key = jax.random.fold_in(jax.random.key(config.seed + 2), step)
  return np.full((config.train.num_samples,) + tuple(info.data_shape), info.vocab_size, np.int32), key


def write_training_samples(graphdef, params, config, info, workdir: str, step: int) -> str | None:
  """Writes config.train.num_samples samples to workdir/samples/step_<step>.txt (text) or .npy (images)."""
  if config.diffusion.objective in NOT_GENERATIVE:
    return None  # scorers and classifiers: nothing to sample
  z_init, key = training_sample_inputs(config, info, step)
  tokens = generate(graphdef, params, config.sampler, z_init, key)
  if jax.process_index() != 0:
    return None
  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  decoded = info.decode(tokens)
  if len(info.data_shape) == 1:
    path = os.path.join(out_dir, f"step_{step:08d}.txt")
    lines = [decoded] if isinstance(decoded, str) else list(decoded)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
  else:
    path = os.path.join(out_dir, f"step_{step:08d}.npy")
    with open(path + ".tmp", "wb") as f:
      np.save(f, np.asarray(decoded))
  os.replace(path + ".tmp", path)  # never a partial file under the final name
  print(f"step {step} | samples written to {path}", flush=True)
  return path
