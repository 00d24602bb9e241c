"""The jitted sampler driver: one `lax.scan` over the grid for a whole batch (md4.md §3, remdm.md §2).

Per step: every position's exponential clock advances by its hazard (ancestral.fire); positions whose clock runs
out unmask (masks) or are remasked (tokens), and get a fresh clock; the denoiser runs only if some position of the
batch unmasks (a step where nothing unmasks does not depend on the prediction, so skipping it is exact for any
denoiser); tokens are drawn only at unmasking positions (categorical.redraw). Random numbers of position n of
example b at step i are counter-mode threefry words of (seed_b, i * N + n), seed_b from fold_in(key, b), so an
example's sample does not depend on the batch size.

Rows of predictions are read only where tokens are drawn, so two costs are paid there alone: a guide's
log-weights (D-CBG, guidance.cbg_guide) and, with a head_fn, the network's vocabulary head (the denoiser then
returns per-position features; remdm.md §5 item 3).

Caching (config.cache, for a denoiser that ignores t; remdm.md §2.3): the last prediction is reused while no token
of the batch has changed since it was computed, so cached and uncached runs give identical samples.

Final step (md4.md §3 'decode', remdm.md §2.8): masks left at the last s (alpha = 1 - eps) are filled from the
denoiser at t = 0 (grid 'remdm': at t = 1e-5, as the reference) by argmax ('argmax', as both references) or by a
draw ('sample'); other tokens are kept.
"""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from md4_jax.sampling import ancestral, categorical, grid as grid_lib, remdm
from md4_jax.sampling.config import SamplerConfig


@struct.dataclass
class Plan:
  """Per-step coefficients, float32 [T] each (host-computed in float64)."""

  t_model: jax.Array        # time given to the denoiser
  t: jax.Array              # step start / end times (GenMD4)
  s: jax.Array
  hazard_mask: jax.Array    # -log P(masked token stays masked)
  hazard_unmask: jax.Array  # -log(1 - sigma_t): unmasked token -> mask
  sigma: jax.Array          # sigma_t ('conf': the base that eta_conf distributes over tokens)


@struct.dataclass
class SamplerState:
  z: jax.Array                # [B, ...] int32 tokens, mask id V
  clock: jax.Array            # [B, ...] float32 exponential clocks (ancestral.fire)
  nfe: jax.Array              # [] int32 denoiser calls so far
  neg_psi: jax.Array | None   # [B, N] float32 ('conf'): minus the draw probability, -inf if not remaskable
  cache: jax.Array | None     # [B, ..., V] float32 last denoiser output (config.cache)
  cache_z: jax.Array | None   # [B, ...] int32 the input that produced `cache`


@dataclasses.dataclass(frozen=True)
class Static:
  """Static arguments of the jitted run."""

  vocab_size: int
  out_dim: int          # last dimension of the denoiser's output: V, or the feature width with a head_fn
  capacity: int         # positions handled per pass of the compacted loops (capacity_for)
  remask: bool          # some sigma_t > 0
  conf: bool            # per-token sigma from confidences (ReMDM 'conf' with some sigma_t > 0)
  genmd4: bool
  cache: bool
  final: str
  temperature: float
  top_p: float
  top_p_rule: str
  t_final: float        # time of the final noise removal (grid_lib.final_time)


def make_plan(config: SamplerConfig) -> Plan:
  """The per-step coefficients of `config`."""
  grid = grid_lib.make_grid(config)
  sigma = remdm.step_sigma(config, grid)
  conf = config.name == "remdm" and config.strategy == "conf"
  if config.name == "euler":
    p_unmask, p_stay = ancestral.euler_transition(grid_lib.schedule_of(config), grid)
  else:
    p_unmask, p_stay = ancestral.transition(grid, np.zeros_like(sigma) if conf else sigma)
  hazard_mask = ancestral.host_hazard(p_unmask, p_stay)
  hazard_unmask = ancestral.host_hazard(sigma, 1.0 - sigma)
  arrays = (grid.t_model, grid.t, grid.s, hazard_mask, hazard_unmask, sigma)
  return Plan(*(np.asarray(a, np.float32) for a in arrays))


def capacity_for(num_positions: int) -> int:
  """Positions per pass of the compacted loops: ~1/256 of them as a power of 2, at least 16.

  Typical steps change far fewer positions, so one pass usually suffices; busier steps take several. The value
  depends only on the shape, so configs of the same structure share one compiled loop.
  """
  return min(num_positions, max(16, 1 << (-(-num_positions // 256) - 1).bit_length()))


def make_static(config: SamplerConfig, plan: Plan, vocab_size: int, num_positions: int, genmd4: bool,
                out_dim: int | None = None) -> Static:
  """The static part of a run: only what changes the compiled program (not sigma_t or the grid's values)."""
  remask = bool(np.any(np.asarray(plan.sigma) > 0))
  return Static(vocab_size=vocab_size, out_dim=out_dim or vocab_size, capacity=capacity_for(num_positions),
                remask=remask,
                conf=remask and config.name == "remdm" and config.strategy == "conf", genmd4=genmd4,
                cache=config.cache, final=config.final,
                temperature=config.temperature, top_p=config.top_p, top_p_rule=config.top_p_rule,
                t_final=grid_lib.final_time(config))


def _transform(static: Static):
  """Temperature then top-p on log-probs [..., V], or None when both are off."""
  if static.temperature == 1.0 and static.top_p == 1.0:
    return None

  def transform(logp):
    if static.temperature != 1.0:
      logp = logp / static.temperature
    if static.top_p < 1.0:
      return categorical.top_p_filter(logp, static.top_p, static.top_p_rule)
    return logp - jax.nn.logsumexp(logp, axis=-1, keepdims=True)

  return transform


def run(denoise_fn, key, z_init, plan: Plan, genmd4_w, guide, head_fn, static: Static):
  """Samples from z_init [B, ...] (mask id V where to generate); returns (z [B, ...] int32, stats).

  guide: None, or guide(z [B, N], t [B], idx [K], V) -> [K, V] log-weights added to the prediction at the flat
  positions idx where a token is drawn. head_fn: None (denoise_fn gives log-probs), or features [K, F] ->
  log-probs [K, V] applied to denoise_fn's per-position features where needed (`sampling.sample`).
  """
  mask_id, capacity = static.vocab_size, static.capacity
  batch, shape, m = z_init.shape[0], z_init.shape, z_init.size
  num_steps = plan.t.shape[0]
  transform = _transform(static)
  conf = static.conf
  seeds = categorical.row_seeds(key, batch)  # [B, 2]
  remaskable = z_init == mask_id  # fixed (prompt) tokens are never remasked

  def denoise(state, t):
    """The prediction for state.z at time t (scalar), from the cache when valid."""
    t_batch = jnp.full((batch,), t, jnp.float32)
    if not static.cache:
      return denoise_fn(state.z, t_batch).astype(jnp.float32), state.replace(nfe=state.nfe + 1)
    valid = jnp.all(state.cache_z == state.z)
    logp = jax.lax.cond(valid, lambda: state.cache, lambda: denoise_fn(state.z, t_batch).astype(jnp.float32))
    return logp, state.replace(nfe=state.nfe + (~valid).astype(jnp.int32), cache=logp, cache_z=state.z)

  def rows_of(out, z, t):
    """idx [K] -> log-probs [K, V] from the denoiser output [B, ..., V or F] (through the head if any), plus the
    guide's log-weights for tokens drawn from z at time t (scalar) if there is a guide."""
    flat = out.reshape(m, -1)
    t_batch = jnp.full((batch,), t, jnp.float32)

    def rows(idx):
      logp = flat[idx] if head_fn is None else head_fn(flat[idx]).astype(jnp.float32)
      return logp if guide is None else logp + guide(z.reshape(batch, -1), t_batch, idx, mask_id)

    return rows

  def redraw(fired, clock, rows, step, rows_transform):
    """categorical.redraw on [B, ...] arrays: fresh clocks, and tokens if rows (rows_of) are given."""
    out = categorical.redraw(fired.reshape(m), clock.reshape(m), rows, seeds, step, capacity, rows_transform)
    return tuple(a.reshape(shape) for a in out)

  def step(state, xs):
    i, p = xs
    hazard_unmask = None
    if static.remask:
      sigma = p.sigma * remdm.conf_weights(state.neg_psi).reshape(shape) if conf else None
      hazard_unmask = ancestral.hazard(sigma, 1.0 - sigma) if conf else p.hazard_unmask

    hazard_mask, log_w = p.hazard_mask, None
    if static.genmd4:  # P(stay masked) depends on the prediction: the denoiser runs while masks remain
      def with_mu(state):
        logp, state = denoise(state, p.t_model)
        log_mu = logp if transform is None else transform(logp)
        return (state,) + ancestral.genmd4_transition(log_mu, p.t, p.s, genmd4_w)

      def without_mu(state):
        return state, jnp.zeros(shape), jnp.zeros(shape + (mask_id,))

      state, hazard_mask, log_w = jax.lax.cond(jnp.any(state.z == mask_id), with_mu, without_mu, state)

    unmask, remask, clock = ancestral.fire(state.clock, state.z, remaskable, mask_id, hazard_mask, hazard_unmask)
    if static.remask:  # fresh clocks for the remasked positions; no prediction needed
      clock = redraw(remask, clock, None, i, None)[0]

    def with_draw(state, clock):
      if log_w is not None:  # GenMD4: no head_fn, no guide
        return (state,) + redraw(unmask, clock, rows_of(log_w, state.z, p.t_model), i, None)
      out, state = denoise(state, p.t_model)
      return (state,) + redraw(unmask, clock, rows_of(out, state.z, p.t_model), i, transform)

    def without_draw(state, clock):
      return state, clock, jnp.zeros(shape, jnp.int32), jnp.zeros(shape, jnp.float32)

    state, clock, tokens, probs = jax.lax.cond(jnp.any(unmask), with_draw, without_draw, state, clock)
    z = jnp.where(unmask, tokens, jnp.where(remask, mask_id, state.z))
    if conf:
      neg_psi = jnp.where(unmask, -probs, jnp.where(remask, -jnp.inf, state.neg_psi.reshape(shape)))
      state = state.replace(neg_psi=neg_psi.reshape(batch, -1))
    state = state.replace(z=z, clock=clock)
    return state, (jnp.sum(z == mask_id), jnp.sum(remask))

  first_counter = jnp.full((batch,), np.uint32((num_steps + 1) * (m // batch)))  # after every step's counters
  first_bits = categorical.random_words(seeds, first_counter, 2 * (m // batch))
  state = SamplerState(
      z=z_init, clock=categorical.exponential(first_bits.reshape(shape + (2,))), nfe=jnp.int32(0),
      neg_psi=jnp.full((batch, m // batch), -jnp.inf, jnp.float32) if conf else None,
      cache=jnp.zeros(shape + (static.out_dim,), jnp.float32) if static.cache else None,
      cache_z=jnp.full(shape, -1, jnp.int32) if static.cache else None)
  state, (num_masked, num_remasked) = jax.lax.scan(step, state, (jnp.arange(num_steps), plan))

  # Final step: fill the masks left after the last step from the prediction at t_final.
  remaining = state.z == mask_id

  def fill(state):
    out, state = denoise(state, static.t_final)
    if static.final == "argmax" and guide is None and head_fn is None:
      return state, jnp.argmax(out, axis=-1).astype(jnp.int32)
    rows = rows_of(out, state.z, static.t_final)
    if static.final == "argmax":
      return state, categorical.argmax_at(remaining.reshape(m), rows, capacity).reshape(shape)
    return state, redraw(remaining, state.clock, rows, num_steps, transform)[1]

  state, tokens = jax.lax.cond(jnp.any(remaining), fill, lambda st: (st, jnp.zeros(shape, jnp.int32)), state)
  z = jnp.where(remaining, tokens, state.z)
  return z, {"nfe": state.nfe, "num_masked": num_masked, "num_remasked": num_remasked}


run_jit = jax.jit(run, static_argnames=("static",))
