"""Samplers of masked diffusion models: MD4 ancestral and Euler, GenMD4, ReMDM (cap, rescale, conf, loop, switch),
FB and DFM. Public face: `sample`, `default_config`, `validate_config`.

    config = sampling.default_config("remdm")
    tokens, stats = sampling.sample(denoise_fn, key, z_init, config, return_stats=True)

`denoise_fn(z_t [B, ...] int32, t [B] float) -> log-probabilities [B, ..., V]` over the V data tokens (mask id V).
Pass a `jax.tree_util.Partial(fn, params)` to have `params` traced rather than baked into the compiled loop as
constants.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from md4_jax.sampling.config import SamplerConfig, default_config
from md4_jax.sampling.loop import make_plan, make_static, run_jit

__all__ = ["sample", "default_config", "validate_config", "SamplerConfig"]


def validate_config(config: ml_collections.ConfigDict) -> SamplerConfig:
  """Checks every field `config.name` uses; raises ValueError naming the field and why. Returns the frozen form."""
  return SamplerConfig.from_config(config)


def sample(denoise_fn, key: jax.Array, z_init: jax.Array, config: ml_collections.ConfigDict, *,
           genmd4_w: jax.Array | None = None, return_stats: bool = False, guide=None, head_fn=None):
  """Generates the masked positions of z_init [B, ...] (int, mask id V); returns int32 tokens shaped like z_init.

  key: one key (example b draws from fold_in(key, b)) or typed keys [B], one per example.
  Tokens of z_init other than V are fixed: they are never changed, also under remasking (all masks =
  unconditional; anything else = prefix or infilling). The whole run is one jitted `lax.scan`.
  genmd4_w: [V] per-token exponents w of a GenMD4 state-dependent schedule alpha_{t,v} = 1 - (1 - eps) t^{w_v}
  (genmd4.TokenSchedule, as the objective; replaces config.schedule, and eps cancels from the step; name must be
  'ancestral'; md4.md §2.9).
  guide: None, or a `jax.tree_util.Partial` guide(z_t [B, N] int32, t [B] float32, idx [K] int32, V) -> [K, V]
  float32 log-weights added to the prediction only at the flat positions idx = b * N + n where a token is drawn
  (guidance.cbg_guide: D-CBG at the cost of the drawn positions, not of all L; data [B, N] only; not with
  genmd4_w).
  head_fn: None, or a `jax.tree_util.Partial` head_fn(features [K, F]) -> log-probs [K, V]; then denoise_fn(z_t, t)
  returns per-position features [B, ..., F] and the head (a network's final layer over a large vocabulary) runs
  only at the positions where a token is drawn: the samples of the denoiser head_fn(denoise_fn(z_t, t)), without
  its [B, ..., V] output (`generate.factored_denoiser`). Not with genmd4_w.
  return_stats: also return a dict with 'nfe' (denoiser calls), 'num_masked' [T] and 'num_remasked' [T] (masks
  after, and remasks in, each step, summed over the batch) and 'num_steps'.
  """
  static_config = validate_config(config)
  z_init = jnp.asarray(z_init)
  if not jnp.issubdtype(z_init.dtype, jnp.integer) or z_init.ndim < 2:
    raise ValueError(f"z_init must be an int array [B, ...]; got {z_init.dtype} of shape {z_init.shape}")
  z_init = z_init.astype(jnp.int32)
  # Partials, so that their bound arguments (parameters) are traced arguments of the jitted loop.
  denoise_fn, head_fn, guide = (fn if fn is None or isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)
                                for fn in (denoise_fn, head_fn, guide))
  out = jax.eval_shape(denoise_fn, z_init, jax.ShapeDtypeStruct(z_init.shape[:1], jnp.float32))
  out_dim = vocab_size = out.shape[-1]
  if head_fn is not None:
    if genmd4_w is not None:
      raise ValueError("head_fn (the head at drawn positions) cannot serve genmd4_w, which needs every prediction")
    vocab_size = jax.eval_shape(head_fn, jax.ShapeDtypeStruct((1, out_dim), out.dtype)).shape[-1]
  if out.shape != z_init.shape + (out_dim,):
    what, last = ("features", "F") if head_fn is not None else ("log-probs", "V")
    raise ValueError(f"denoise_fn must map z_t {z_init.shape} to {what} {z_init.shape + (last,)}; got {out.shape}")
  if not isinstance(z_init, jax.core.Tracer):
    lo, hi = int(jnp.min(z_init)), int(jnp.max(z_init))
    if lo < 0 or hi > vocab_size:
      raise ValueError(f"z_init ids must lie in [0, V={vocab_size}] (V = mask); got values in [{lo}, {hi}]")
  if genmd4_w is not None:
    if static_config.name != "ancestral":
      raise ValueError(f"genmd4_w (state-dependent schedule) needs name='ancestral'; got {static_config.name!r}")
    genmd4_w = jnp.asarray(genmd4_w, jnp.float32)
    if genmd4_w.shape != (vocab_size,):
      raise ValueError(f"genmd4_w must have shape ({vocab_size},); got {genmd4_w.shape}")
    if not isinstance(genmd4_w, jax.core.Tracer) and not bool(jnp.all(genmd4_w > 0)):
      raise ValueError("genmd4_w must be > 0 everywhere")
  if guide is not None and (genmd4_w is not None or z_init.ndim != 2):
    raise ValueError("guide needs sequence data z_init [B, N] and no genmd4_w (use guidance.cbg_denoiser there); "
                     f"got z_init of shape {z_init.shape}" + (" and genmd4_w" if genmd4_w is not None else ""))
  plan = make_plan(static_config)
  if (plan.t.shape[0] + 2) * (z_init.size // z_init.shape[0]) >= 2**32:
    raise ValueError(f"(steps + 2) * positions per example must stay below 2^32 (random counters); got "
                     f"{plan.t.shape[0]} steps and {z_init.size // z_init.shape[0]} positions")
  static = make_static(static_config, plan, vocab_size, z_init.size, genmd4_w is not None, out_dim)
  tokens, stats = run_jit(denoise_fn, key, z_init, plan, genmd4_w, guide, head_fn, static=static)
  if not return_stats:
    return tokens
  return tokens, dict(stats, num_steps=int(plan.t.shape[0]))
