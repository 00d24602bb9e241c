"""An enumerable toy distribution p over V^N and its exact denoiser, for exact-answer tests."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np


class ToyDistribution:
  """A correlated, non-uniform p(x) over all V^N sequences with the exact conditionals as a table.

  `denoise(z_t, t)` returns log p(x^n = v | unmasked tokens of z_t) at masked positions and a uniform
  row at unmasked ones (the loss never reads those); it ignores t, as the true MD4 posterior does.
  """

  def __init__(self, vocab_size: int = 3, length: int = 3, seed: int = 0):
    self.vocab_size, self.length = vocab_size, length
    rng = np.random.default_rng(seed)
    self.sequences = np.array(list(itertools.product(range(vocab_size), repeat=length)), np.int32)
    probs = rng.dirichlet(np.full(len(self.sequences), 0.8))
    self.probs = (probs + 0.01) / (probs + 0.01).sum()  # every sequence has mass >= ~0.3%
    self.table = self._conditionals()  # [(V+1)^N, N, V]

  def code(self, z):
    """Index of z in [0, (V+1)^N): base V+1 digits, most significant first. z: [..., N]."""
    weights = (self.vocab_size + 1) ** np.arange(self.length - 1, -1, -1)
    return (z * weights).sum(-1)

  def _conditionals(self) -> np.ndarray:
    v, n = self.vocab_size, self.length
    table = np.full(((v + 1) ** n, n, v), 1.0 / v)
    for z in itertools.product(range(v + 1), repeat=n):
      z = np.array(z)
      consistent = np.all((self.sequences == z) | (z == v), axis=1)
      p = self.probs * consistent
      for pos in np.flatnonzero(z == v):
        table[self.code(z), pos] = np.bincount(self.sequences[:, pos], weights=p, minlength=v) / p.sum()
    return table

  def denoise(self, z_t, t):
    del t
    return jnp.log(jnp.asarray(self.table, jnp.float32))[self.code(z_t)]

  def exact_masked_nll(self, x: np.ndarray, masked: np.ndarray) -> float:
    """sum_{n masked} -log p(x^n | x_unmasked), float64."""
    z = np.where(masked, self.vocab_size, x)
    rows = self.table[self.code(z)]
    return float(-np.sum(np.log(rows[np.arange(self.length), x])[masked]))
