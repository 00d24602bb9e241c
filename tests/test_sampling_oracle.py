"""Whole sampler runs with exact oracle denoisers of a small enumerable distribution (remdm.md §6, md4.md §7).

p is a fixed, correlated distribution over L = 3 tokens of V = 3 values (27 sequences, two of them impossible).
The oracle x_theta(z)^n = P(x^n | x agrees with the unmasked tokens of z) is tabulated for all 4^3 inputs, so a
run of 100k samples x 1000 steps stays cheap.
"""

from __future__ import annotations

import itertools
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from md4_jax import sampling
from md4_jax.sampling import grid as grid_lib, loop

V, L = 3, 3
XS = np.array(list(itertools.product(range(V), repeat=L)))        # [27, L] all sequences
ZS = np.array(list(itertools.product(range(V + 1), repeat=L)))    # [64, L] all inputs, mask = V
P = np.random.default_rng(0).dirichlet(np.full(len(XS), 0.7))
P[[3, 11]] = 0.0
P /= P.sum()
NUM = 100_000


def posterior_table(weights: np.ndarray) -> np.ndarray:
  """log x_theta for every input: [64, L, V], from unnormalised weights of each (input, sequence) [64, 27]."""
  agree = np.all((ZS[:, None, :] == V) | (ZS[:, None, :] == XS[None]), axis=-1)
  table = np.einsum("zx,xni->zni", agree * weights, np.eye(V)[XS])
  total = table.sum(-1, keepdims=True)
  table = np.where(total > 0, table / np.where(total > 0, total, 1.0), 1.0 / V)  # unreachable inputs: uniform
  with np.errstate(divide="ignore"):
    return np.log(table)


MD4_TABLE = jnp.asarray(posterior_table(np.broadcast_to(P, (len(ZS), len(XS)))), jnp.float32)


def input_index(z):
  return sum(z[..., n] * (V + 1)**(L - 1 - n) for n in range(L))


def md4_oracle(z, t):
  """Exact, time-independent x_theta for the MD4 forward process: [B, L] -> [B, L, V]."""
  return MD4_TABLE[input_index(z)]


def genmd4_oracle(w: np.ndarray, eps: float):
  """Exact x_theta at time t for GenMD4's forward process: masked x^n weighs 1 - alpha_{t, x^n} = (1 - eps) t^w."""
  def denoise(z, t):
    one_minus_alpha = (1 - eps) * jnp.power(t[0], jnp.asarray(w, jnp.float32))  # [V]
    masked = ZS[:, None, :] == V  # [64, 1, L]
    factors = jnp.where(masked, one_minus_alpha[XS][None], 1.0)  # [64, 27, L]
    agree = np.all((ZS[:, None, :] == V) | (ZS[:, None, :] == XS[None]), axis=-1)
    weights = jnp.asarray(agree * P) * jnp.prod(factors, axis=-1)  # [64, 27]
    table = jnp.einsum("zx,xni->zni", weights, jnp.asarray(np.eye(V)[XS], jnp.float32))
    return jnp.log(table / jnp.sum(table, -1, keepdims=True))[input_index(z)]
  return denoise


def config_of(name, **overrides):
  config = sampling.default_config(name).to_dict()
  config["top_p"] = 1.0  # the oracle tests need the untruncated prediction
  for path, value in overrides.items():
    node = config
    *parents, leaf = path.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return ml_collections.ConfigDict(config)


def distribution(tokens) -> np.ndarray:
  tokens = np.asarray(tokens)
  assert tokens.min() >= 0 and tokens.max() < V  # no mask left (remdm.md §6 item 9)
  return np.bincount(tokens @ V ** np.arange(L - 1, -1, -1), minlength=V**L) / len(tokens)


def total_variation(tokens, p=P) -> float:
  return 0.5 * float(np.abs(distribution(tokens) - p).sum())


# Distribution ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, overrides", [
    ("ancestral", {}),
    ("remdm", {"remdm.strategy": "cap", "remdm.eta": 0.008}),
    ("remdm", {"remdm.strategy": "rescale", "remdm.eta": 0.015}),
    ("remdm", {"remdm.strategy": "loop", "remdm.eta": 0.02}),
])
def test_oracle_samples_reproduce_p(name, overrides):
  """remdm.md §6 items 4, 6, 8: TV(samples, p) <= 0.02 over 100k samples at T = 1000, and the per-step mask
  counts follow 1 - alpha_s (Thm 3.1) with remasks at rate sigma_t alpha_t, within Monte-Carlo error."""
  config = config_of(name, num_steps=1000, **overrides)
  tokens, stats = sampling.sample(md4_oracle, jax.random.key(0), jnp.full((NUM, L), V), config, return_stats=True)
  tv = total_variation(tokens)
  assert tv <= 0.02, tv
  frozen = sampling.validate_config(config)
  grid = grid_lib.make_grid(frozen)
  positions = NUM * L
  masked = grid.one_minus_alpha_s
  z_score = (np.asarray(stats["num_masked"]) - positions * masked) / np.sqrt(positions * masked * (1 - masked) + 1)
  assert np.max(np.abs(z_score)) < 5.5
  expected_remasks = positions * np.sum(grid.alpha_t * np.asarray(loop.make_plan(frozen).sigma, np.float64))
  assert abs(int(np.sum(stats["num_remasked"])) - expected_remasks) < 5 * np.sqrt(expected_remasks + 1)


def test_genmd4_oracle_samples_reproduce_p():
  """md4.md §2.9: the state-dependent reverse step with exact GenMD4 posteriors reproduces p (40k samples, T =
  400: expected TV from sampling noise ~0.009); MD4's step with the same posteriors is far off."""
  w = np.array([0.3, 1.0, 3.0])
  config = config_of("ancestral", num_steps=400)
  denoise = genmd4_oracle(w, config.eps)
  tokens = sampling.sample(denoise, jax.random.key(1), jnp.full((40_000, L), V), config, genmd4_w=jnp.asarray(w))
  assert total_variation(tokens) <= 0.02
  wrong = sampling.sample(denoise, jax.random.key(1), jnp.full((2_000, L), V), config)
  assert total_variation(wrong) > 0.2


SINGLE = 20_000
P1 = np.array([0.6, 0.3, 0.1])


def single_position_oracle(z, t):
  return jnp.broadcast_to(jnp.log(jnp.asarray(P1, jnp.float32)), z.shape + (V,))


def single_position_frequencies(config) -> np.ndarray:
  """Token frequencies of SINGLE one-position samples with the exact prediction P1 (md4.md §7 item 19)."""
  tokens = sampling.sample(single_position_oracle, jax.random.key(2), jnp.full((SINGLE, 1), V), config)
  return np.bincount(np.asarray(tokens)[:, 0], minlength=V) / SINGLE


@pytest.mark.parametrize("name, overrides", [
    ("ancestral", {}), ("euler", {}), ("fb", {}), ("dfm", {}),
    ("remdm", {"remdm.strategy": "cap", "remdm.eta": 0.5}),
    ("remdm", {"remdm.strategy": "rescale", "remdm.eta": 0.9}),
    ("remdm", {"remdm.strategy": "conf", "remdm.eta": 1.0}),
    ("remdm", {"remdm.strategy": "loop", "remdm.eta": 0.1}),
    ("remdm", {"remdm.strategy": "cap", "remdm.eta": 0.5, "remdm.t_switch": 0.5}),
])
def test_single_position_is_exact_for_any_number_of_steps(name, overrides):
  """md4.md §7 item 19: with L = 1 and the exact p(x_0), every sampler gives p for any T (here T = 8)."""
  freq = single_position_frequencies(config_of(name, num_steps=8, grid="uniform", **overrides))
  np.testing.assert_array_less(np.abs(freq - P1), 5 * np.sqrt(P1 * (1 - P1) / SINGLE))


@pytest.mark.parametrize("overrides, expected", [
    ({"temperature": 2.0, "top_p": 0.7, "top_p_rule": "md4"}, np.sqrt(P1[:2]) / np.sqrt(P1[:2]).sum()),
    ({"final": "sample", "eps": 0.45}, P1),
])
def test_temperature_top_p_and_final_sample(overrides, expected):
  """Single-position runs: tempered p^(1/2) is [0.44, 0.31, 0.18] after normalising, and top-p 0.7 ('md4')
  keeps {0, 1} (the rules themselves are tested in test_sampling.py). A schedule leaving ~45% masks at the end,
  filled by sampling, still gives p."""
  expected = np.pad(expected, (0, V - len(expected)))
  freq = single_position_frequencies(config_of("ancestral", num_steps=8, **overrides))
  np.testing.assert_array_less(np.abs(freq - expected), 5 * np.sqrt(expected * (1 - expected) / SINGLE) + 1e-9)


def test_infilling_keeps_fixed_tokens_and_samples_the_conditional():
  """md4.md §7 item 21 / the infilling requirement: x^1 fixed, (x^0, x^2) ~ p(. | x^1), under remasking."""
  z_init = jnp.tile(jnp.array([[V, 1, V]]), (NUM, 1))
  config = config_of("remdm", num_steps=1000, **{"remdm.strategy": "rescale", "remdm.eta": 0.05})
  tokens = np.asarray(sampling.sample(md4_oracle, jax.random.key(4), z_init, config))
  assert np.all(tokens[:, 1] == 1)
  conditional = np.where(XS[:, 1] == 1, P, 0.0) / P[XS[:, 1] == 1].sum()
  assert total_variation(tokens, conditional) <= 0.02


# Invariants of a run ------------------------------------------------------------------------------------------


CALLS = []


def recording_oracle(z, t):
  """md4_oracle that appends each input z it is called on (in execution order) to CALLS."""
  jax.debug.callback(lambda z: CALLS.append(np.asarray(z)), z, ordered=True)
  return md4_oracle(z, t)


def recorded_run(config, z_init):
  """(tokens, stats, the inputs of every denoiser call) of a run with key 5."""
  CALLS.clear()
  tokens, stats = sampling.sample(recording_oracle, jax.random.key(5), z_init, config, return_stats=True)
  jax.effects_barrier()
  return tokens, stats, list(CALLS)


RUNS = [
    ("ancestral", {}),
    ("remdm", {"remdm.strategy": "rescale", "remdm.eta": 1.0}),
    ("remdm", {"remdm.strategy": "conf", "remdm.eta": 1.0}),
    ("remdm", {"remdm.strategy": "loop", "remdm.eta": 0.1}),
]


@pytest.mark.parametrize("name, overrides", RUNS)
def test_trajectory_invariants_caching_and_nfe(name, overrides):
  """remdm.md §6 items 7, 9; md4.md §7 item 17: prompt tokens never change, no token becomes another without
  passing through the mask, masks only decrease without remasking, and the reported NFE is the number of calls."""
  z_init = jnp.full((8, L), V).at[::2, 1].set(2)
  tokens, stats, calls = recorded_run(config_of(name, num_steps=100, **overrides), z_init)
  assert int(stats["nfe"]) == len(calls) > 0
  states = np.stack(calls + [np.asarray(tokens)])  # [calls + 1, B, L]
  fixed = np.asarray(z_init) != V
  assert np.all(states[:, fixed] == np.asarray(z_init)[fixed])
  before, after = states[:-1], states[1:]
  assert not np.any((before != V) & (after != V) & (before != after))
  if name == "ancestral":
    assert np.all(np.diff(np.asarray(stats["num_masked"])) <= 0)
    assert np.all(after[before != V] == before[before != V])



@pytest.mark.parametrize("name, overrides", RUNS[1:2])
def test_cached_run_gives_the_same_samples_with_fewer_calls(name, overrides):
  """remdm.md §6 item 12: with a denoiser that ignores t, reusing the last prediction while no token changed
  gives bitwise the same samples; each remaining call sees a new input, and the NFE counts them."""
  z_init = jnp.full((8, L), V).at[::2, 1].set(2)
  tokens, _, calls = recorded_run(config_of(name, num_steps=100, **overrides), z_init)
  cached_tokens, cached_stats, cached_calls = recorded_run(config_of(name, num_steps=100, cache=True, **overrides),
                                                          z_init)
  np.testing.assert_array_equal(cached_tokens, tokens)
  assert int(cached_stats["nfe"]) == len(cached_calls) < len(calls)
  assert all(np.any(a != b) for a, b in zip(cached_calls[:-1], cached_calls[1:]))


def test_batch_size_does_not_change_a_sample():
  """remdm.md §6 item 14: example b's sample is the same in a batch of 1 or 8 (so is its distribution); 'conf'
  couples the positions of an example most, through its softmax over the example's tokens."""
  config = config_of("remdm", num_steps=100, **{"remdm.strategy": "conf", "remdm.eta": 1.0})
  single = recorded_run(config, jnp.full((1, L), V))[0]
  batch = recorded_run(config, jnp.full((8, L), V))[0]
  np.testing.assert_array_equal(single, batch[:1])
  assert len({tuple(row) for row in np.asarray(batch)}) > 1


VOCAB = 20
EMBED = jax.random.normal(jax.random.key(7), (VOCAB + 1, VOCAB))


def random_denoiser(z, t):
  """A row-wise denoiser over VOCAB tokens whose prediction depends on the whole input row and on t."""
  context = jnp.mean(EMBED[z], axis=1, keepdims=True)  # [B, 1, V]
  return jax.nn.log_softmax(2.0 * EMBED[z] + context + t[:, None, None], axis=-1)


COMMON = dict(num_steps=100, grid="uniform", top_p=0.9, top_p_rule="remdm")
PROMPTED = jnp.full((8, 16), VOCAB).at[:, :3].set(jnp.arange(3))


def test_eta_zero_is_ancestral_bitwise():
  """remdm.md §6 item 1: sigma = 0 gives MD4's samples exactly, with the same key (and top-p), for every
  strategy whose sigma scales with eta (that sigma > 0 does remask is checked by the oracle runs' remask counts)."""
  reference = sampling.sample(random_denoiser, jax.random.key(8), PROMPTED, config_of("ancestral", **COMMON))
  for strategy in ("cap", "rescale", "conf"):
    remdm = config_of("remdm", **COMMON, **{"remdm.strategy": strategy, "remdm.eta": 0.0})
    np.testing.assert_array_equal(sampling.sample(random_denoiser, jax.random.key(8), PROMPTED, remdm), reference)


def test_genmd4_with_equal_exponents_is_ancestral_with_poly():
  """md4.md §7 item 14 for the sampler: all w = c gives the same samples as MD4 with schedule 'poly<c>' and eps = 0
  (GenMD4's step does not depend on eps)."""
  vocab = VOCAB
  z_init = jnp.full((8, 16), vocab)
  common = dict(num_steps=100, grid="uniform", top_p=0.9, top_p_rule="remdm", eps=0.0)
  poly = sampling.sample(random_denoiser, jax.random.key(9), z_init, config_of("ancestral", schedule="poly2",
                                                                                **common))
  genmd4 = sampling.sample(random_denoiser, jax.random.key(9), z_init, config_of("ancestral", **common),
                           genmd4_w=jnp.full((vocab,), 2.0))
  np.testing.assert_array_equal(genmd4, poly)


def test_image_shaped_input_compiles_once_and_is_deterministic():
  vocab = 6
  z_init = jnp.full((2, 4, 4, 3), vocab)
  denoise = lambda z, t: jax.nn.log_softmax(jnp.zeros(z.shape + (vocab,)) + jnp.arange(vocab) * 0.1)
  config = config_of("remdm", num_steps=20, **{"remdm.strategy": "cap", "remdm.eta": 0.1})
  first = sampling.sample(denoise, jax.random.key(10), z_init, config)
  size = loop.run_jit._cache_size()
  again = sampling.sample(denoise, jax.random.key(10), z_init, config)
  other = sampling.sample(denoise, jax.random.key(11), z_init, config)
  assert loop.run_jit._cache_size() == size  # a new key does not recompile
  assert first.shape == z_init.shape and first.dtype == jnp.int32
  np.testing.assert_array_equal(first, again)
  assert np.any(np.asarray(first) != np.asarray(other))
