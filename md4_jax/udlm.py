"""Uniform-noise discrete diffusion (UDLM; Schiff et al. 2024, "Simple Guidance Mechanisms for Discrete Diffusion
Models", §3): the baseline of ReMDM's QM9 study (remdm.md §3.4).

Forward process: q(z_t | x) = Cat(alpha_t x + (1 - alpha_t) / V 1): each token is kept with probability alpha_t,
else replaced by a uniform random token (which may be x itself). No mask token: z_t ids lie in [0, V).
With xbar = V alpha_t x + (1 - alpha_t) 1 and xbar_theta = V alpha_t x_theta(z_t, t) + (1 - alpha_t) 1, i = z_t:

  L_inf = int_0^1 E_q[ -alpha'_t / (V alpha_t) sum_l ( V / xbar_theta_i - V / xbar_i
                                                       + sum_j xbar_j / xbar_i log(xbar_j xbar_theta_i /
                                                                                  (xbar_i xbar_theta_j)) ) ] dt

(Schiff et al. eq. 13): the KL rate between the reverse CTMC given x, rates -alpha'/(V alpha) xbar_j / xbar_i for
i -> j, and the model's, the same with xbar_theta. Plus the prior KL(q(z_1|x) || uniform) and the reconstruction
-E log q(z_0|x) (p(x|z_0) = q(z_0|x) / sum_x' q(z_0|x'), the sum being 1), both closed forms per token.

The ancestral sampler draws z_1 uniformly and steps z_s ~ q(z_s | z_t, x_theta) ∝ (alpha_{t|s} e_{z_t} +
(1 - alpha_{t|s}) / V) * (alpha_s x_theta + (1 - alpha_s) / V) on the uniform grid t_i = i / T.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from md4_jax import diffusion
from md4_jax.sampling import validate_config
from md4_jax.schedules import MaskingSchedule, make_schedule


def corrupt(key: jax.Array, x: jax.Array, alpha_t: jax.Array, vocab_size: int) -> jax.Array:
  """z_t ~ q(z_t | x): keep x^l with probability alpha_t [B], else a uniform token. x, z_t: int32 [B, L]."""
  key_keep, key_noise = jax.random.split(key)
  keep = jax.random.uniform(key_keep, x.shape) < diffusion.reverse_broadcast(alpha_t, x.ndim)
  noise = jax.random.randint(key_noise, x.shape, 0, vocab_size, x.dtype)
  return jnp.where(keep, x, noise)


def integrand(log_probs: jax.Array, x: jax.Array, z_t: jax.Array, alpha_t: jax.Array,
              dalpha_t: jax.Array) -> jax.Array:
  """The time integrand of L_inf at z_t (module docstring), summed over tokens: [B].

  log_probs: log x_theta(z_t, t) [B, L, V]; x, z_t: int [B, L]; alpha_t, dalpha_t: [B].
  """
  vocab_size = log_probs.shape[-1]
  a = alpha_t[:, None, None]
  xbar = vocab_size * a * jax.nn.one_hot(x, vocab_size) + (1.0 - a)  # [B, L, V]
  xbar_theta = vocab_size * a * jnp.exp(log_probs) + (1.0 - a)     # [B, L, V]
  xbar_i = jnp.take_along_axis(xbar, z_t[..., None], -1)              # [B, L, 1]
  xbar_theta_i = jnp.take_along_axis(xbar_theta, z_t[..., None], -1)  # [B, L, 1]
  log_ratio = jnp.log(xbar) + jnp.log(xbar_theta_i) - jnp.log(xbar_i) - jnp.log(xbar_theta)  # 0 at j = i
  per_token = (vocab_size / xbar_theta_i[..., 0] - vocab_size / xbar_i[..., 0]
               + jnp.sum(xbar / xbar_i * log_ratio, axis=-1))  # [B, L]
  return -dalpha_t / (vocab_size * alpha_t) * jnp.sum(per_token, axis=-1)


def boundary_nats(schedule: MaskingSchedule, vocab_size: int) -> float:
  """Per-token prior KL(q(z_1|x) || uniform) + reconstruction -E_{q(z_0|x)} log q(z_0|x), in nats."""
  def probs(alpha):  # (P(z = x), P(z = each other token))
    return alpha + (1 - alpha) / vocab_size, (1 - alpha) / vocab_size
  with jax.ensure_compile_time_eval():  # constants, also when called under jit
    alpha_1, alpha_0 = float(schedule.alpha(1.0)), float(schedule.alpha(0.0))
  p_same, p_other = probs(alpha_1)
  prior = p_same * math.log(vocab_size * p_same) + (vocab_size - 1) * p_other * math.log(vocab_size * p_other)
  p_same, p_other = probs(alpha_0)
  reconstruction = -(p_same * math.log(p_same) + (vocab_size - 1) * p_other * math.log(p_other))
  return prior + reconstruction


def continuous_nelbo(denoise_fn, key: jax.Array, x: jax.Array, schedule: MaskingSchedule,
                     antithetic: bool = True) -> jax.Array:
  """Per-example UDLM NELBO in nats [B]: one t and z_t per example, plus the per-token boundary terms."""
  key_t, key_z = jax.random.split(key)
  t = diffusion.sample_times(key_t, x.shape[0], antithetic)
  alpha_t = schedule.alpha(t)
  vocab_size = diffusion.denoiser_vocab_size(denoise_fn, x)
  z_t = corrupt(key_z, x, alpha_t, vocab_size)
  log_probs = denoise_fn(z_t, t)  # [B, L, V]
  term = integrand(log_probs, x, z_t, alpha_t, schedule.dalpha(t))
  return term + math.prod(x.shape[1:]) * boundary_nats(schedule, vocab_size)


def sample(denoise_fn, key: jax.Array, z_init: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
  """Ancestral UDLM sampling of the positions of z_init [B, L] equal to V (others are kept); int32 [B, L].

  Reads config.num_steps (T), config.schedule and config.eps of a `sampling.default_config` config.
  """
  frozen = validate_config(config)
  schedule = make_schedule(frozen.schedule, frozen.eps)
  z_init = jnp.asarray(z_init, jnp.int32)
  vocab_size = diffusion.denoiser_vocab_size(denoise_fn, z_init)
  fixed = z_init != vocab_size
  key_init, key_steps = jax.random.split(key)
  z = jnp.where(fixed, z_init, jax.random.randint(key_init, z_init.shape, 0, vocab_size, jnp.int32))
  num_steps = frozen.num_steps

  def step(z, i):
    t = jnp.full(z.shape[:1], (num_steps - i) / num_steps)
    s = t - 1.0 / num_steps
    alpha_t, alpha_s = schedule.alpha(t)[:, None, None], schedule.alpha(s)[:, None, None]
    x_theta = jnp.exp(denoise_fn(z, t))  # [B, L, V]
    alpha_ts = alpha_t / alpha_s
    log_q = (jnp.log(alpha_ts * jax.nn.one_hot(z, vocab_size) + (1.0 - alpha_ts) / vocab_size)
             + jnp.log(alpha_s * x_theta + (1.0 - alpha_s) / vocab_size))
    z_s = jax.random.categorical(jax.random.fold_in(key_steps, i), log_q).astype(jnp.int32)
    return jnp.where(fixed, z, z_s), None

  z, _ = jax.lax.scan(step, z, jnp.arange(num_steps))
  return z
