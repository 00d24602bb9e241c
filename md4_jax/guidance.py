"""Guidance for masked diffusion as denoiser transforms (Schiff et al. 2024, "Simple Guidance Mechanisms for
Discrete Diffusion Models"; ReMDM §5.2, remdm.md §3.4).

Each function maps denoisers `denoise_fn(z_t [B, L] int32, t [B]) -> log-probs [B, L, V]` to a new denoiser of
the same shape, so every sampler strategy (`sampling.sample`: ancestral, ReMDM cap / rescale / conf / loop /
switch, FB, DFM) runs guided without change:

    denoise = guidance.cfg_denoiser(model.denoiser(label), model.denoiser(None), gamma=2.0)
    tokens = sampling.sample(denoise, key, z_init, config)

- D-CFG (classifier-free): log p_gamma(x^l | z_t, y) = log_softmax(gamma log p(x^l | z_t, y) + (1 - gamma)
  log p(x^l | z_t)), the model trained with labels dropped at rate `model.label_dropout`.
- D-CBG (classifier-based, the full gradient-free form): p_gamma(x^l = v | z_t, y) ∝ p(x^l = v | z_t)
  p(y | z_t with z_t^l := v)^gamma, with a classifier log p(y | z_t, t) evaluated on every candidate token v.
  Two forms with the same samples: `cbg_denoiser` tilts every masked position (L x V classifier passes per
  sequence per step); `cbg_guide`, passed as `sampling.sample(..., guide=...)`, tilts only the positions where the
  sampler draws a token this step (about L / T of them), since no other position's prediction is used.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def _cfg(denoise_cond, denoise_uncond, gamma, z_t, t):
  log_cond = denoise_cond(z_t, t)      # [B, L, V]
  log_uncond = denoise_uncond(z_t, t)  # [B, L, V]
  return jax.nn.log_softmax(gamma * log_cond + (1.0 - gamma) * log_uncond, axis=-1)


def cfg_denoiser(denoise_cond: DenoiseFn, denoise_uncond: DenoiseFn, gamma: float) -> jax.tree_util.Partial:
  """D-CFG: the normalised log-probs log_softmax(gamma log p(x|z_t, y) + (1 - gamma) log p(x|z_t)).

  gamma = 1 is the conditional model, gamma = 0 the unconditional one. Returned as a `jax.tree_util.Partial`
  so parameters bound in the input Partials stay traced inside `sampling.sample`.
  """
  return jax.tree_util.Partial(_cfg, _as_partial(denoise_cond), _as_partial(denoise_uncond),
                               jnp.asarray(gamma, jnp.float32))


def _cbg(denoise_fn, classifier_log_prob_fn, target, gamma, z_t, t):
  log_p = denoise_fn(z_t, t)  # [B, L, V]
  batch, length, vocab = log_p.shape
  at_position = lambda l: _cbg_rows(classifier_log_prob_fn, target, gamma, z_t, t, jnp.arange(batch) * length + l,
                                    vocab)  # [B, V]: B V classifier passes at a time
  log_y_given_v = jnp.moveaxis(jax.lax.map(at_position, jnp.arange(length)), 0, 1)  # [B, L, V]
  masked = (z_t == vocab)[..., None]  # [B, L, 1]; unmasked positions keep the unguided prediction
  return jax.nn.log_softmax(log_p + jnp.where(masked, log_y_given_v, 0.0), axis=-1)


def cbg_denoiser(denoise_fn: DenoiseFn, classifier_log_prob_fn: DenoiseFn, target: int | jax.Array,
                 gamma: float) -> jax.tree_util.Partial:
  """D-CBG: p_gamma(x^l = v | z_t) ∝ p(x^l = v | z_t) p(y = target | z_t^l := v, t)^gamma at masked positions.

  classifier_log_prob_fn(z [N, L] int32, t [N]) -> log p(y | z_t = z, t) [N, C]; target: a class id or [B] ids.
  """
  return jax.tree_util.Partial(_cbg, _as_partial(denoise_fn), _as_partial(classifier_log_prob_fn),
                               jnp.asarray(target, jnp.int32), jnp.asarray(gamma, jnp.float32))


def _cbg_rows(classifier_log_prob_fn, target, gamma, z_t, t, idx, vocab_size: int):
  """gamma log p(y = target | z_t with z^l := v, t) [K, V] at flat positions idx [K] = b L + l; z_t [B, L], t [B]."""
  batch, length = z_t.shape
  b, l = idx // length, idx % length  # [K] each
  rows = jnp.broadcast_to(z_t[b][:, None, :], (idx.shape[0], vocab_size, length))  # [K, V, L]
  candidates = jnp.arange(vocab_size, dtype=z_t.dtype)[None, :, None]
  rows = jnp.where(jnp.arange(length)[None, None, :] == l[:, None, None], candidates, rows)  # z_t with z^l := v
  num = idx.shape[0] * vocab_size
  log_y = classifier_log_prob_fn(rows.reshape(num, length), jnp.repeat(t[b], vocab_size))  # [K V, C]
  target = jnp.broadcast_to(jnp.asarray(target, jnp.int32), (batch,))[b]  # [K]
  log_y = jnp.take_along_axis(log_y.reshape(idx.shape[0], vocab_size, -1), target[:, None, None], axis=-1)
  return gamma * log_y[..., 0]  # [K, V]


def cbg_guide(classifier_log_prob_fn: DenoiseFn, target: int | jax.Array, gamma: float) -> jax.tree_util.Partial:
  """D-CBG for `sampling.sample(denoise_fn, ..., guide=cbg_guide(...))`: gamma log p(y = target | z_t^l := v, t)
  [K, V] at the K positions where a token is drawn (arguments as `cbg_denoiser`); the same samples as sampling
  cbg_denoiser(denoise_fn, ...), at the cost of the drawn positions only."""
  return jax.tree_util.Partial(_cbg_rows, _as_partial(classifier_log_prob_fn), jnp.asarray(target, jnp.int32),
                               jnp.asarray(gamma, jnp.float32))


def _as_partial(fn):
  return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)
