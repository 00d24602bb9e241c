"""Config validation shared by the network configs: failures are ValueErrors naming the value."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def check_choice(name: str, value: Any, options) -> None:
  if value not in options:
    raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, options))}")


def check_positive(**values: int) -> None:
  for name, value in values.items():
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name} must be a positive int; got {value!r}")


def check_divides(name: str, value: int, divisor_name: str, divisor: int) -> None:
  if value % divisor:
    raise ValueError(f"{name}={value} must be divisible by {divisor_name}={divisor}")


def check_heads(width: int, num_heads: int) -> None:
  """width splits into num_heads heads of an even head_dim (rotary embeddings rotate pairs)."""
  check_divides("width", width, "num_heads", num_heads)
  if (width // num_heads) % 2:
    raise ValueError(f"head_dim = width // num_heads = {width // num_heads} must be even for RoPE")


def check_network(config) -> None:
  """The fields every network config has: dropout, num_classes, dtype and attention."""
  if not 0.0 <= config.dropout < 1.0:
    raise ValueError(f"dropout must lie in [0, 1); got {config.dropout!r}")
  if config.num_classes < 0:
    raise ValueError(f"num_classes must be >= 0; got {config.num_classes}")
  check_choice("dtype", config.dtype, tuple(DTYPES))
  check_choice("attention", config.attention, ATTENTION_IMPLS)
