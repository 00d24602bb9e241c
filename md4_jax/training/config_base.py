"""The base experiment config every file in experiments/ starts from (inheritance by import).

Groups: data, model, diffusion, optim, train, sampler, mesh. Defaults are MD4's (md4.md §5.7): continuous-time
loss, linear schedule with eps = 1e-4, antithetic t, AdamW with warmup + cosine decay, EMA 0.9999.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import ml_collections

from md4_jax.data import default_data_config
from md4_jax.model import DiffusionConfig


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = default_data_config("chars")

  config.model = ml_collections.ConfigDict()
  config.model.kind = "transformer"   # 'transformer' | 'unet' | 'uvit' | 'mdlm_dit'
  config.model.size = "tiny"          # a preset of md4_jax.nn.SIZES[kind], or None
  config.model.label_dropout = 0.0    # classifier-free guidance: rate of training labels replaced by the null id
  config.model.network = ml_collections.ConfigDict(
      {"dropout": 0.0, "mlp_type": "glu", "time_conditioning": True, "dtype": "float32", "remat": False,
       "attention": "auto",  # 'auto' (cuDNN on a GPU for bf16) | 'xla' | 'cudnn'
       "scan_layers": False})  # True: stacked blocks under jax.lax.scan (compiles one block; other checkpoints)

  config.diffusion = ml_collections.ConfigDict(dataclasses.asdict(DiffusionConfig()))

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 3e-4
  config.optim.warmup_steps = 2000
  config.optim.min_lr_ratio = 0.0     # cosine decays to lr * min_lr_ratio at train.num_steps
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.weight_decay = 0.0
  config.optim.grad_clip = 1.0        # global-norm clipping; 0 = off
  config.optim.ema_decay = 0.9999

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 1_000_000
  config.train.batch_size = 512       # global batch, over all devices and processes
  config.train.grad_accum_steps = 1   # microbatches per step (each batch_size / grad_accum_steps)
  config.train.log_every = 100
  config.train.eval_every = 10_000
  config.train.eval_batch_size = 512
  config.train.eval_batches = -1      # -1 = the whole validation split
  config.train.sample_every = 10_000
  config.train.num_samples = 8
  config.train.checkpoint_every = 5_000
  config.train.keep = 3               # most recent checkpoints kept
  config.train.keep_period = 0        # also keep every step divisible by this (0 = off)
  config.train.async_checkpoint = True

  from md4_jax.sampling import default_config as sampler_default_config  # pylint: disable=g-import-not-at-top
  config.sampler = sampler_default_config("ancestral")

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1               # -1 = all devices not used by fsdp
  config.mesh.fsdp = 1
  return config


def load_experiment(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config()` of the experiment file at `path` (for one experiment built on another)."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  if spec is None or not os.path.exists(path):
    raise ValueError(f"no experiment config file at {path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)
