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


def generate(graphdef, params, sampler_config: ml_collections.ConfigDict, z_init: np.ndarray,
             key: jax.Array) -> np.ndarray:
  """Fills the masks (id V) of z_init int [B, *data_shape]; returns int32 tokens of the same shape."""
  model = nnx.merge(graphdef, params)
  return np.asarray(sampling.sample(denoiser(graphdef, params), key, jnp.asarray(z_init, jnp.int32),
                                    sampler_config, genmd4_w=model.genmd4_w))


def write_training_samples(graphdef, params, config, info, workdir: str, step: int) -> str | None:
  """Writes config.train.num_samples samples to workdir/samples/step_<step>.txt (text) or .npy (images)."""
  if config.diffusion.objective == "ar":
    return None  # 'ar' models are likelihood / Gen-PPL scorers here; the diffusion samplers do not apply
  key = jax.random.fold_in(jax.random.key(config.seed + 2), step)
  z_init = np.full((config.train.num_samples,) + tuple(info.data_shape), info.vocab_size, np.int32)
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
