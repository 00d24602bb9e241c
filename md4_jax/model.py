"""DiffusionModel: a denoising network plus (for GenMD4) its learnable schedule exponents.

The network maps (z_t, t, cond) to logits; the model turns them into the denoiser of diffusion.py
(log-probabilities over the V data tokens) and composes the objectives. No loops, no optimizer.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from md4_jax import diffusion
from md4_jax import genmd4
from md4_jax import objectives
from md4_jax.nn import SIZES, make_network
from md4_jax.schedules import MaskingSchedule, make_schedule


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """The `config.diffusion` group as a typed value."""
  objective: str = "md4"       # a name of md4_jax.objectives (the registry)
  schedule: str = "linear"     # a make_schedule name (GenMD4: the per-token poly, this is ignored)
  eps: float = 1e-4
  antithetic: bool = True
  cont_time: bool = True       # False: the discrete-time L_T with `num_steps`
  num_steps: int = 1000
  power_init: float = 1.0      # GenMD4: initial w

  def __post_init__(self):
    if objectives.get(self.objective).uses_schedule_exponents and not self.cont_time:
      raise ValueError("diffusion.objective='genmd4' needs diffusion.cont_time=True")
    make_schedule(self.schedule, self.eps)

  @property
  def masking_schedule(self) -> MaskingSchedule:
    return make_schedule(self.schedule, self.eps)


class Loss(NamedTuple):
  objective: jax.Array  # [] what the optimizer minimises (the GenMD4 surrogate, or mean NELBO)
  nelbo: jax.Array      # [B] per-example NELBO in nats: the number to report


class DiffusionModel(nnx.Module):
  """A network wrapped as a denoiser, and its NELBO."""

  def __init__(self, network: nnx.Module, diffusion_config: DiffusionConfig, vocab_size: int, *,
               rngs: nnx.Rngs, num_classes: int = 0, label_dropout: float = 0.0):
    del rngs  # the network is built by the caller
    if not 0.0 <= label_dropout < 1.0:
      raise ValueError(f"model.label_dropout={label_dropout}; need a rate in [0, 1)")
    self.network = network
    self.num_classes = num_classes
    self.label_dropout = label_dropout  # classifier-free guidance: P(label -> null id num_classes) in training
    self.diffusion_config = diffusion_config
    self.vocab_size = vocab_size
    self.w_raw = (nnx.Param(genmd4.init_w_raw(vocab_size, diffusion_config.power_init))
                  if objectives.get(diffusion_config.objective).uses_schedule_exponents else None)

  @property
  def genmd4_w(self) -> jax.Array | None:
    """GenMD4's per-token exponents w = softplus(w_raw) [V], or None for MD4."""
    return None if self.w_raw is None else jax.nn.softplus(self.w_raw[...])

  def log_probs(self, z_t: jax.Array, t: jax.Array, cond: jax.Array | None = None, *,
                rngs: nnx.Rngs | None = None) -> jax.Array:
    """The denoiser: log mu(z_t, t) [*z_t.shape, V] in float32."""
    logits = self.network(z_t, t, cond, rngs=rngs)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

  def head_features(self, z_t: jax.Array, t: jax.Array, cond: jax.Array | None = None) -> jax.Array:
    """Per-position features [B, L, F] for `head_log_probs` (transformer networks; no dropout)."""
    return self.network.head_features(z_t, t, cond)

  def head_log_probs(self, features: jax.Array) -> jax.Array:
    """log_probs at K positions from their `head_features` rows [K, F] -> [K, V] float32."""
    return jax.nn.log_softmax(self.network.head(features).astype(jnp.float32), axis=-1)

  def ar_token_log_probs(self, x: jax.Array, cond: jax.Array | None = None, *,
                         rngs: nnx.Rngs | None = None) -> jax.Array:
    """'ar' models: log p(x_n | x_<n) [B, L] under causal attention; the mask id V serves as BOS."""
    bos = jnp.full(x.shape[:1] + (1,), self.vocab_size, x.dtype)
    inputs = jnp.concatenate([bos, x[:, :-1]], axis=1)  # [B, L]
    log_probs = self.log_probs(inputs, jnp.zeros(x.shape[:1]), cond, rngs=rngs)  # [B, L, V]
    return diffusion.log_prob_of(log_probs, x)

  def classifier_log_probs(self, z_t: jax.Array, t: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """'classifier' models: log p(y | z_t, t) [B, C]; the network's per-position class logits [B, L, C]
    averaged over positions (= a linear head on mean-pooled features)."""
    logits = self.network(z_t, t, None, rngs=rngs).astype(jnp.float32)  # [B, L, C]
    return jax.nn.log_softmax(jnp.mean(logits, axis=1), axis=-1)

  def denoiser(self, cond: jax.Array | None = None, *, rngs: nnx.Rngs | None = None):
    """denoise_fn(z_t, t) for diffusion.py and sampling (cond and dropout bound).

    With rngs, each call gets its own dropout key, fold_in(a key drawn here, call index), in fresh nnx.Rngs: the
    function holds no mutable state, so it may also be traced abstractly (jax.eval_shape in diffusion.py) inside
    the training step's jax.grad and scan.
    """
    if rngs is None:
      return lambda z_t, t: self.log_probs(z_t, t, cond)
    key, calls = rngs.dropout(), itertools.count()
    return lambda z_t, t: self.log_probs(z_t, t, cond, rngs=nnx.Rngs(dropout=jax.random.fold_in(key, next(calls))))

  def loss(self, x: jax.Array, key: jax.Array, cond: jax.Array | None = None, *,
           rngs: nnx.Rngs | None = None) -> Loss:
    """The training objective and per-example NELBO (nats) of a batch x [B, *S].

    With label_dropout > 0, each example's label cond [B] is replaced by the null id num_classes with that
    probability (classifier-free guidance training, Ho & Salimans 2022; D-CFG, Schiff et al. 2024).
    """
    objective = objectives.get(self.diffusion_config.objective)
    if cond is not None and self.label_dropout > 0 and not objective.labels_only:
      key, key_drop = jax.random.split(key)
      drop = jax.random.bernoulli(key_drop, self.label_dropout, cond.shape)  # [B]
      cond = jnp.where(drop, self.num_classes, cond)
    return Loss(*objective.loss(self, x, key, cond, rngs))


CONV_NETWORKS = ("unet", "uvit")


def network_kwargs(model_config: ml_collections.ConfigDict, vocab_size: int, num_classes: int,
                   data_shape: tuple[int, ...]) -> dict:
  """Network fields from `config.model` (`kind`, `size` preset, `network` overrides) and the data."""
  kind = model_config.kind
  sizes = SIZES.get(kind, {})
  if model_config.size is not None and model_config.size not in sizes:
    raise ValueError(f"unknown model.size {model_config.size!r} for {kind!r}; valid: "
                     f"{', '.join(sizes) or '(none)'}")
  kwargs = dict(sizes[model_config.size]) if model_config.size is not None else {}
  kwargs.update(model_config.network.to_dict())
  kwargs.update(vocab_size=vocab_size, num_classes=num_classes)
  if kind in CONV_NETWORKS:
    kwargs["num_channels"] = data_shape[-1]
  return kwargs


def make_model(config: ml_collections.ConfigDict, info, seed: int) -> DiffusionModel:
  """Builds the model of an experiment config (`config.model`, `config.diffusion`) for data `info`."""
  rngs = nnx.Rngs(seed)
  kwargs = network_kwargs(config.model, info.vocab_size, info.num_classes, info.data_shape)
  objective = objectives.get(config.diffusion.objective)
  if objective.network:
    if config.model.kind != "transformer":
      raise ValueError(f"diffusion.objective={objective.name!r} needs model.kind='transformer'; got "
                       f"{config.model.kind!r}")
    kwargs.update(objective.network)
  if objective.labels_only:
    if config.model.kind != "transformer" or not info.num_classes:
      raise ValueError("diffusion.objective='classifier' needs model.kind='transformer' and labelled data; got "
                       f"{config.model.kind!r} on data with num_classes={info.num_classes}")
    kwargs.update(num_outputs=info.num_classes, num_classes=0)  # predicts the label; not conditioned on it
  if config.model.kind == "mdlm_dit" and config.diffusion.objective not in ("md4", "genmd4"):
    raise ValueError(f"model.kind='mdlm_dit' (SUBS: unmasked tokens carried over) needs a masked-diffusion "
                     f"objective, 'md4' or 'genmd4'; got diffusion.objective={config.diffusion.objective!r}")
  network = make_network(config.model.kind, kwargs, rngs=rngs)
  return DiffusionModel(network, DiffusionConfig(**config.diffusion.to_dict()), info.vocab_size, rngs=rngs,
                        num_classes=info.num_classes, label_dropout=config.model.get("label_dropout", 0.0))
