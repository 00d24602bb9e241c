"""Parameters of an unrolled network in the layout of `model.network.scan_layers=True` (tests only)."""

import jax
import jax.numpy as jnp


def stack_blocks(tree):
  """A pure dict of an unrolled model's parameters -> the scanned layout: every 'blocks' dict of per-layer
  subtrees {0: ..., 1: ...} becomes one subtree whose leaves carry a leading [num_layers] axis."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for name, value in tree.items():
    if name == "blocks" and isinstance(value, dict) and all(isinstance(i, int) for i in value):
      out[name] = jax.tree.map(lambda *layers: jnp.stack(layers), *(value[i] for i in sorted(value)))
    else:
      out[name] = stack_blocks(value)
  return out
