"""Exact random choices of the samplers: exponential clocks, categorical draws, nucleus (top-p) filtering.

Precision (md4.md §3 'mean', remdm.md §2.5, §5 item 2). The references draw from the joint categorical
[p_unmask * mu, 1 - p_unmask] over V + 1 classes by Gumbel-argmax; in float32 the Gumbel noise is capped near 16.6,
so a class whose weight is < ~1e-8 of the largest is never drawn, and every token weight is scaled by the small
p_unmask against the mask. The public ReMDM code pays for a float64 [B, L, V+1] tensor to avoid that. Here the draw
is factorised instead, which is the same distribution:
1. whether a position unmasks (or is remasked) is decided by an exponential clock (ancestral.fire);
2. a token is drawn from the normalised (optionally tempered and top-p filtered) prediction, only at positions that
   unmask (`redraw`), by an exponential race argmax_v (log w_v - log E_v), E_v ~ Exp(1), done in two levels
   (groups, then a token inside the group) so that it needs 2 sqrt(V) random numbers rather than V.
Both use `exponential`, built from 64 random bits as E = -log1p(-u): u's density is right down to 2^-64 (float32
`jax.random.uniform` is a 2^-23 grid), so E keeps its small-value tail, which is where the race decides a rare
token and a clock decides a rare event. The race errs only by float32 rounding of log w, i.e. by a relative ~1e-6
in each token's probability however small it is; an inverse CDF over a float32 cumsum would instead err by ~1e-7
of the total mass per token, and drop tail tokens whose weight is under half an ulp of the running sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

_ONE_BITS = 0x3F800000  # float32 1.0 as int32; non-negative floats order like their bit patterns
_TOP_P_ITERS = 30       # 2^30 > _ONE_BITS + 1: bisection over bit patterns ends with hi - lo = 1
_BLOCK = 16             # block size of for_selected's rank search


def exponential(bits: jax.Array) -> jax.Array:
  """Exp(1) samples, float32 [...], from pairs of uint32 words bits [..., 2].

  u = (hi + (lo + 1/2) 2^-32) 2^-32 has relative precision 2^-24 down to 2^-64, capped at the largest float32
  below 1; E = -log1p(-u) lies in (2.7e-20, 16.6].
  """
  hi = bits[..., 0].astype(jnp.float32) * np.float32(2.0**-32)
  lo = (bits[..., 1].astype(jnp.float32) + np.float32(0.5)) * np.float32(2.0**-64)
  return -jnp.log1p(-jnp.minimum(hi + lo, np.float32(1.0 - 2.0**-24)))


def row_seeds(key: jax.Array, batch: int) -> jax.Array:
  """Two uint32 seed words per example, [B, 2]: the first two words of fold_in(key, b) (any key type), or of
  key[b] for typed keys [B], one per example (md4_jax.generate: example keys independent of the batch)."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == (batch,):
    keys = key
  else:
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(batch, dtype=jnp.uint32))
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.key_data(keys)
  return keys.reshape(batch, -1)[:, :2].astype(jnp.uint32)


def random_words(seeds: jax.Array, counter: jax.Array, num_words: int) -> jax.Array:
  """Counter-mode threefry: uint32 [K, num_words], word j of row k = hash(seeds[k], (counter[k], j)).

  seeds [K, 2] uint32 (rows of `row_seeds`), counter [K] uint32. One hash site, whatever K and num_words.
  """
  def one(seed, hi):
    pairs = -(-num_words // 2)
    count = jnp.concatenate([jnp.full((pairs,), hi, jnp.uint32), jnp.arange(pairs, dtype=jnp.uint32)])
    return threefry_2x32((seed[0], seed[1]), count)[:num_words]  # (hi, j) pairs -> 2 words each
  return jax.vmap(one)(seeds, counter.astype(jnp.uint32))


def position_words(seeds: jax.Array, step, idx: jax.Array, num_per_row: int, num_words: int) -> jax.Array:
  """Random words of flat positions idx [K] (= b * N + n) at `step`: counter step * N + n of example b's seed.

  An example's randomness therefore depends only on (key, b, step, n), not on the batch size or on which other
  positions are drawn alongside. (steps + 2) * N must stay below 2^32 (checked by `sample`).
  """
  counter = jnp.asarray(step, jnp.uint32) * np.uint32(num_per_row) + (idx % num_per_row).astype(jnp.uint32)
  return random_words(seeds[idx // num_per_row], counter, num_words)


def for_selected(select: jax.Array, capacity: int, body, init):
  """carry = body(idx [capacity], carry) over the positions where select [M] is True, `capacity` at a time.

  idx lists the selected positions in increasing order, padded with M. Ranks are located through per-block
  counts (blocks of 16): one O(M) pass per call, then O(capacity * 16) per chunk, with no scatter over M. The
  loop runs ceil(#selected / capacity) chunks.
  """
  m = select.shape[0]
  num_blocks = -(-m // _BLOCK)
  blocks = jnp.pad(select, (0, num_blocks * _BLOCK - m)).reshape(num_blocks, _BLOCK)
  counts = jnp.sum(blocks, axis=1, dtype=jnp.int32)  # [M / 16]
  ends = jnp.cumsum(counts)
  total = ends[-1]

  def chunk(c, carry):
    ranks = c * capacity + jnp.arange(capacity, dtype=jnp.int32)  # [K]
    block = jnp.minimum(jnp.searchsorted(ends, ranks, side="right", method="scan"), num_blocks - 1)
    rank_inside = ranks - (ends[block] - counts[block])
    inside = jnp.argmax(jnp.cumsum(blocks[block], axis=1) > rank_inside[:, None], axis=1)
    return body(jnp.where(ranks < total, block * _BLOCK + inside, m).astype(jnp.int32), carry)

  return jax.lax.fori_loop(0, (total + capacity - 1) // capacity, chunk, init)


def top_p_filter(logits: jax.Array, p: float, rule: str) -> jax.Array:
  """Nucleus filter of logits [..., V] -> normalised log-probs [..., V], -inf outside the kept set.

  rule 'md4' (md4 binary_search.topp_mask): the smallest set of most likely tokens with mass >= p.
  rule 'remdm' (ReMDM l.668-677): tokens whose descending cumulative mass is <= p, and always the top-1.
  The kept set is {v : q_v >= tau}; tau is found by bisection over float32 bit patterns (30 passes over V, no
  sort). Ties at tau are kept or dropped together ('md4' keeps the whole tie group, like md4; 'remdm' drops a
  group that would cross p, unless it is the top group), so the result does not depend on token order.
  rule 'remdm_sort' (ReMDM's code exactly, ties included): the prefix of the probabilities sorted descending by a
  stable sort (ties in increasing token id) whose cumulative sum is <= p, and always the first: the 'remdm' set, then
  of the tie group that crosses p the k smallest ids, k = the number of its tokens that still fit (at least 1 when
  it is the top group). No sort: the group and the ranks inside it come from the same bisection and a cumsum.
  """
  q = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))  # [..., V], max 1
  target = p * jnp.sum(q, axis=-1)  # [...]
  strict = rule != "md4"  # remdm, remdm_sort: find the smallest tau with mass(tau) <= target
  as_float = lambda bits: jax.lax.bitcast_convert_type(bits, jnp.float32)[..., None]

  def body(_, bounds):
    lo, hi = bounds  # md4: mass(lo) >= target > mass(hi); remdm: mass(lo) > target >= mass(hi)
    mid = lo + (hi - lo) // 2
    mass = jnp.sum(jnp.where(q >= as_float(mid), q, 0.0), axis=-1)
    ok = mass > target if strict else mass >= target
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  lo0 = jnp.zeros(q.shape[:-1], jnp.int32)
  lo, hi = jax.lax.fori_loop(0, _TOP_P_ITERS, body, (lo0, lo0 + _ONE_BITS + 1))
  if rule == "remdm_sort":
    kept = _cut_crossing_group(q, target, as_float(hi))
  else:
    kept = q >= as_float(jnp.minimum(hi, _ONE_BITS) if strict else lo)
  kept = jnp.where(kept, logits, -jnp.inf)
  return kept - jax.nn.logsumexp(kept, axis=-1, keepdims=True)


def _cut_crossing_group(q: jax.Array, target: jax.Array, tau: jax.Array) -> jax.Array:
  """'remdm_sort' kept mask [..., V]: q >= tau (the whole groups that fit, tau > 1 when none does), and the first
  k ids of the largest group below tau, k = floor((target - their mass) / its value), at least 1 if nothing else."""
  whole = q >= tau
  mass = jnp.sum(jnp.where(whole, q, 0.0), axis=-1, keepdims=True)
  q_cross = jnp.max(jnp.where(whole, -1.0, q), axis=-1, keepdims=True)  # the crossing group's value
  k = jnp.floor((target[..., None] - mass) / q_cross)
  k = jnp.where(mass > 0.0, k, jnp.maximum(k, 1.0))
  group = q == q_cross
  return whole | (group & (jnp.cumsum(group, axis=-1) <= k))


def race_groups(vocab_size: int) -> tuple[int, int]:
  """(G, C): `race` splits V tokens into G groups of C = ceil(sqrt(V)) (the last padded)."""
  size = max(1, int(np.ceil(np.sqrt(vocab_size))))
  return -(-vocab_size // size), size


def race(log_w: jax.Array, bits: jax.Array) -> jax.Array:
  """Two-level exponential race: P(v) = w_v / sum w, from 2 (G + C) random words instead of 2 V.

  log_w [K, V] unnormalised log-weights (-inf = excluded), bits [K, G + C, 2] uint32 (`race_groups`) -> int32 [K].
  A group g is drawn with probability W_g / sum W, W_g = sum of its weights, by argmax_g (log W_g - log E_g), E
  ~ Exp(1), then a token of g with probability w_v / W_g by a race inside g. Both levels keep float32 relative
  precision (W_g is a sum of positive terms), so a token's probability is exact to ~1e-6 relative however small.
  """
  num, vocab = log_w.shape
  groups, size = race_groups(vocab)
  log_w = jnp.pad(log_w, ((0, 0), (0, groups * size - vocab)), constant_values=-jnp.inf).reshape(num, groups, size)
  log_e = jnp.log(exponential(bits))  # [K, G + C]
  group = jnp.argmax(jax.nn.logsumexp(log_w, axis=-1) - log_e[:, :groups], axis=-1)  # [K]
  inside = jnp.take_along_axis(log_w, group[:, None, None], axis=1)[:, 0]  # [K, C]
  return (group * size + jnp.argmax(inside - log_e[:, groups:], axis=-1)).astype(jnp.int32)


def redraw(fired, clocks, rows_of, seeds, step, capacity: int, transform=None):
  """Fresh clocks, and tokens drawn from the rows of log-weights, at the fired positions only.

  fired [M] bool, clocks [M] float32, rows_of(idx [K]) -> log-weights [K, V] of flat positions idx (a gather
  from [M, V], or a vocabulary head applied to gathered features, plus guidance computed only where a token is
  drawn), or None (clocks only); M = B * N row-major over the examples, seeds [B, 2] (`row_seeds`). Position
  idx uses `position_words`: two words for its clock, 2 (G + C) for its race. `transform` maps the rows [K, V]
  -> log-weights (temperature, top-p); None uses them as they are.
  Returns clocks [M], tokens [M] int32 and the drawn token's probability under the transformed, normalised row,
  probs [M] float32 (tokens and probs 0 where not fired).
  """
  m = clocks.shape[0]
  num_per_row = m // seeds.shape[0]
  vocab_size = None if rows_of is None else jax.eval_shape(rows_of, jax.ShapeDtypeStruct((1,), jnp.int32)).shape[-1]
  pairs = 1 if rows_of is None else 1 + sum(race_groups(vocab_size))

  def body(idx, carry):
    clocks, tokens, probs = carry
    safe = jnp.minimum(idx, m - 1)
    bits = position_words(seeds, step, safe, num_per_row, 2 * pairs).reshape(-1, pairs, 2)  # [K, 1 + G + C, 2]
    clocks = clocks.at[idx].set(exponential(bits[:, 0]), mode="drop")
    if rows_of is None:
      return clocks, tokens, probs
    rows = rows_of(safe)  # [K, V]
    if transform is not None:
      rows = transform(rows)
    tok = race(rows, bits[:, 1:])
    log_prob = jnp.take_along_axis(rows, tok[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(rows, axis=-1)
    return clocks, tokens.at[idx].set(tok, mode="drop"), probs.at[idx].set(jnp.exp(log_prob), mode="drop")

  init = (clocks, jnp.zeros((m,), jnp.int32), jnp.zeros((m,), jnp.float32))
  return for_selected(fired, capacity, body, init)


def argmax_at(select, rows_of, capacity: int):
  """argmax over V of rows_of(idx) [K, V] at the selected positions select [M]; int32 [M]."""
  m = select.shape[0]

  def body(idx, tokens):
    rows = rows_of(jnp.minimum(idx, m - 1))
    return tokens.at[idx].set(jnp.argmax(rows, axis=-1).astype(jnp.int32), mode="drop")

  return for_selected(select, capacity, body, jnp.zeros((m,), jnp.int32))
