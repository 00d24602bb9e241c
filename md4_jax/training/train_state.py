"""TrainState: everything a step reads and writes, as one pytree (and so one checkpoint item)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
  step: jax.Array        # [] int32, steps taken
  params: dict           # pure dict of the model's nnx.Param values (fp32)
  ema_params: dict       # EMA of params; evaluation and sampling use these
  opt_state: optax.OptState
  rng: jax.Array         # uint32 key data [2]; the step's key is fold_in(rng, step)
  nonfinite: jax.Array   # [] int32, steps whose loss or gradient was NaN / Inf (their update is skipped)


def create(params: dict, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.key(seed)), nonfinite=jnp.zeros((), jnp.int32))


def ema_update(ema: dict, params: dict, decay: float) -> dict:
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
