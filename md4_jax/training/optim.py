"""The optimizer: gradient clipping, AdamW, linear warmup then cosine decay (md4.md §5.7)."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to optim.lr over optim.warmup_steps, then cosine decay to lr * min_lr_ratio."""
  warmup = max(int(optim.warmup_steps), 0)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.lr, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=optim.lr * optim.min_lr_ratio)


DECAYED = ("kernel", "embedding", "pos_embed")  # the matrices (and convolution kernels) of every network


def _decay_mask(params):
  """Weight decay on matrices only, by name (not on biases, norm scales or GenMD4's exponents, whose rank grows
  by one when `model.network.scan_layers` stacks the blocks)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: str(getattr(path[-1], "key", path[-1])) in DECAYED, params)


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  if optim.lr <= 0:
    raise ValueError(f"optim.lr must be > 0; got {optim.lr}")
  chain = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
  chain.append(optax.adamw(learning_rate_schedule(optim, num_steps), b1=optim.b1, b2=optim.b2,
                           weight_decay=optim.weight_decay, mask=_decay_mask))
  return optax.chain(*chain)
