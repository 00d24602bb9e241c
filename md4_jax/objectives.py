"""The registry of objectives: what a model trains with, how it is sampled, its tokens per example and likelihood.

One entry per `config.diffusion.objective`. Adding an objective touches this registry and its own module (its
loss, its sampler), nowhere else:

    objective = objectives.get(config.diffusion.objective)
    objective.loss(model, x, key, cond, rngs)   # (what the optimizer minimises [], per-example NELBO nats [B])
    objective.check_samplable("remdm")          # ValueError for a scorer, a classifier, or a sampler it lacks

Entries: 'md4' (masked diffusion, md4.md §2), 'genmd4' (learned per-token schedule, §2.9), 'ar' (a causal
left-to-right baseline / Gen-PPL scorer), 'udlm' (uniform-noise diffusion, md4_jax/udlm.py), 'classifier' (a noisy
property classifier p(y | z_t, t) on MD4-masked inputs, the classifier of D-CBG; its "NELBO" is the cross-entropy
of the label).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from md4_jax import diffusion
from md4_jax import genmd4
from md4_jax import udlm

MASKED, UNIFORM = "masked", "uniform"  # samplers: md4_jax.sampling (mask id V), udlm.sample (uniform noise)


def _md4_loss(model, x, key, cond, rngs):
  c = model.diffusion_config
  denoise_fn = model.denoiser(cond, rngs=rngs)
  if c.cont_time:
    nelbo = diffusion.continuous_nelbo(denoise_fn, key, x, c.masking_schedule, c.antithetic)
  else:
    nelbo = diffusion.discrete_nelbo(denoise_fn, key, x, c.masking_schedule, c.num_steps)
  return jnp.mean(nelbo), nelbo


def _genmd4_loss(model, x, key, cond, rngs):
  c = model.diffusion_config
  result = genmd4.rloo_loss(model.denoiser(cond, rngs=rngs), key, x, model.genmd4_w, c.eps, c.antithetic)
  return result.surrogate, result.nelbo


def _ar_loss(model, x, key, cond, rngs):
  del key
  nll = -jnp.sum(model.ar_token_log_probs(x, cond, rngs=rngs), axis=-1)
  return jnp.mean(nll), nll


def _udlm_loss(model, x, key, cond, rngs):
  c = model.diffusion_config
  nelbo = udlm.continuous_nelbo(model.denoiser(cond, rngs=rngs), key, x, c.masking_schedule, c.antithetic)
  return jnp.mean(nelbo), nelbo


def _classifier_loss(model, x, key, cond, rngs):
  if cond is None:
    raise ValueError("diffusion.objective='classifier' needs labelled data (the dataset has num_classes=0)")
  c = model.diffusion_config
  key_t, key_mask = jax.random.split(key)
  t = diffusion.sample_times(key_t, x.shape[0], c.antithetic)  # [B]
  z_t = diffusion.mask_tokens(key_mask, x, c.masking_schedule.alpha(t), model.vocab_size)
  nll = -jnp.take_along_axis(model.classifier_log_probs(z_t, t, rngs=rngs), cond[:, None], axis=-1)[:, 0]
  return jnp.mean(nll), nll


@dataclasses.dataclass(frozen=True)
class Objective:
  """One objective. loss(model, x [B, *S], key, cond [B] | None, rngs) -> (objective [], nelbo [B] nats)."""
  name: str
  loss: Callable
  sampler: str | None = MASKED     # MASKED, UNIFORM, or None: not generative
  description: str = ""            # what a checkpoint of it is, for messages
  head_at_drawn: bool = False      # the vocabulary head may run only where tokens are drawn (sampling's head_fn)
  discrete_time: bool = False      # the discrete-time L_T estimator applies (evaluate --discrete_steps)
  exact_likelihood: bool = False   # the NELBO is the exact NLL (one Monte Carlo draw suffices), not a bound
  labels_only: bool = False        # one prediction per example (bits per token divide by 1, not L)
  uses_schedule_exponents: bool = False  # GenMD4's per-token w: sampled with the model's learned schedule
  network: dict = dataclasses.field(default_factory=dict)  # fixed network fields (a causal transformer for 'ar')

  def tokens_per_example(self, data_shape: tuple[int, ...]) -> int:
    """What bits per token divide by: L (tokens, characters or dimensions), or 1 for a label predictor."""
    return 1 if self.labels_only else math.prod(data_shape)

  def check_samplable(self, sampler_name: str) -> None:
    """ValueError unless a model of this objective can be sampled by sampler `sampler_name`."""
    if self.sampler is None:
      raise ValueError(f"this checkpoint is {self.description}; the diffusion samplers do not apply")
    if self.sampler == UNIFORM and sampler_name != "ancestral":
      raise ValueError(f"a {self.name!r} ({self.description}) model samples with sampler.name='ancestral' only; "
                       f"got {sampler_name!r}")


REGISTRY = {o.name: o for o in (
    Objective("md4", _md4_loss, description="a masked diffusion model (MD4)", head_at_drawn=True,
              discrete_time=True),
    Objective("genmd4", _genmd4_loss, description="a GenMD4 model (learned per-token schedule)",
              uses_schedule_exponents=True),
    Objective("ar", _ar_loss, sampler=None, description="an 'ar' model (a Gen-PPL scorer)", exact_likelihood=True,
              network={"causal": True, "time_conditioning": False}),
    Objective("udlm", _udlm_loss, sampler=UNIFORM, description="uniform-noise"),
    Objective("classifier", _classifier_loss, sampler=None, labels_only=True,
              description="a noisy property classifier (for D-CBG)"),
)}
NAMES = tuple(REGISTRY)


def get(name: str) -> Objective:
  """The registered objective `name`; ValueError naming the valid ones."""
  if name not in REGISTRY:
    raise ValueError(f"unknown diffusion.objective {name!r}; valid: {', '.join(NAMES)}")
  return REGISTRY[name]
