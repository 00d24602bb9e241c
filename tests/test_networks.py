"""Tests for md4_jax.nn: shapes, zero-init heads, attention masks, conditioning, dropout, purity,
remat, mixed precision, partitioning annotations and parameter counts.

Micro configs keep compilation cheap; each network is built once per configuration (module-scoped
fixtures) and every forward pass goes through one jitted function. Paper-size parameter counts use
`nnx.eval_shape` (no allocation).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax.nn import NETWORKS, axes, embeddings, make_network
from md4_jax.nn.transformer import TRANSFORMER_SIZES, Transformer, TransformerConfig
from md4_jax.nn.unet import UNET_SIZES, UNet, UNetConfig
from block_layout import stack_blocks

KINDS = ("transformer", "unet", "uvit")
VOCAB = {"transformer": 27, "unet": 16, "uvit": 16}  # small image V keeps the output conv cheap
MICRO = {
    "transformer": dict(vocab_size=27, num_layers=2, num_heads=2, width=32),
    "unet": dict(vocab_size=16, feature_dim=16, num_layers=1, num_groups=4),
    "uvit": dict(vocab_size=16, feature_dim=16, num_layers=1, num_groups=4, image_size=4,
                 dit_layers=1, dit_heads=2, dit_width=32),
}
BASE = dict(num_classes=3, dropout=0.3)  # the fixture networks: class-conditional, with dropout
LABELS = jnp.array([0, 2])


def key(seed: int) -> jax.Array:
  """RBG keys: the networks are agnostic to the key type and they compile much faster on CPU."""
  return jax.random.key(seed, impl="rbg")


def build(kind: str, **overrides) -> nnx.Module:
  config_cls, network_cls = NETWORKS[kind]
  return network_cls(config_cls(**{**MICRO[kind], **overrides}), rngs=nnx.Rngs(key(0)))


def variant(model: nnx.Module, **overrides) -> nnx.Module:
  """`model`'s parameters under another config of the same structure (dtype, remat, causal)."""
  config = dataclasses.replace(model.config, **overrides)
  network_cls = type(model)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: network_cls(config, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, nnx.state(model))


def perturb(model: nnx.Module, scale: float = 0.2) -> nnx.Module:
  """Adds noise to every parameter (numpy: no compilation), so zero-init layers become active."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(1)
  params = jax.tree.map(
      lambda p: jnp.asarray(np.asarray(p) + scale * rng.standard_normal(p.shape), p.dtype), params)
  return nnx.merge(graphdef, params, rest)


def pure_logits_fn(graphdef):
  """The form a train / sample step takes: a jitted pure function of the split state."""

  @jax.jit
  def logits_fn(state, z_t, t, cond, dropout_key):
    rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
    return nnx.merge(graphdef, state)(z_t, t, cond, rngs=rngs)

  return logits_fn


_PURE = {}  # graphdef -> jitted pure logits function


def run(model: nnx.Module, z_t, t, cond=None, dropout_key=None):
  """Logits through the jitted pure function (compiled once per graphdef and input structure)."""
  graphdef, state = nnx.split(model)
  if graphdef not in _PURE:
    _PURE[graphdef] = pure_logits_fn(graphdef)
  return _PURE[graphdef](state, z_t, t, cond, dropout_key)


def inputs(kind: str):
  """z_t [2, 8] or [2, 4, 4, 3] with ids in [0, V] (V = mask), t [2]."""
  rng = np.random.default_rng(0)
  shape = (2, 8) if kind == "transformer" else (2, 4, 4, 3)
  z_t = rng.integers(0, VOCAB[kind] + 1, shape, dtype=np.int32)
  return jnp.asarray(z_t), jnp.asarray(rng.uniform(size=2), jnp.float32)


@pytest.fixture(scope="module", params=KINDS)
def net(request):
  """(kind, network at init, perturbed network, z_t, t) for the BASE config."""
  kind = request.param
  model = build(kind, **BASE)
  return kind, model, perturb(model), *inputs(kind)


def max_diff(a, b) -> float:
  return float(jnp.abs(a - b).max())


def test_shape_dtype_and_uniform_init(net):
  kind, model, _, z_t, t = net
  logits = run(model, z_t, t, LABELS)
  assert logits.shape == (*z_t.shape, VOCAB[kind]) and logits.dtype == jnp.float32
  # Zero-initialised head: exactly uniform log-probabilities -log V.
  np.testing.assert_array_equal(jax.nn.log_softmax(logits), np.float32(-math.log(VOCAB[kind])))


def test_time_and_label_conditioning(net):
  kind, _, model, z_t, t = net
  base = run(model, z_t, t, LABELS)
  per_example = jnp.abs(run(model, z_t, 1.0 - t, LABELS) - base).max(axis=range(1, base.ndim))
  assert float(per_example.min()) > 1e-4  # every example depends on its own t
  assert max_diff(run(model, z_t, t, (LABELS + 1) % 3), base) > 1e-4
  # Label-only conditioning (time_conditioning=False): t is ignored exactly, labels are not.
  model = perturb(build(kind, **{**BASE, "time_conditioning": False}))
  labelled = run(model, z_t, t, LABELS)
  np.testing.assert_array_equal(labelled, run(model, z_t, 1.0 - t, LABELS))
  assert max_diff(labelled, run(model, z_t, t, (LABELS + 1) % 3)) > 1e-4


def test_null_label_and_unconditional_prenorm_transformer():
  model = perturb(build("transformer", **BASE))
  z_t, t = inputs("transformer")
  np.testing.assert_array_equal(run(model, z_t, t), run(model, z_t, t, jnp.full((2,), 3)))
  # No conditioning at all: RMSNorm pre-norm blocks, no conditioning parameters, t ignored.
  model = perturb(build("transformer", time_conditioning=False))
  assert model.cond_embed is None and model.blocks[0].modulation is None
  np.testing.assert_array_equal(run(model, z_t, t), run(model, z_t, 1.0 - t))


def test_dropout_only_with_call_rngs(net):
  _, _, model, z_t, t = net
  assert not jax.tree.leaves(nnx.state(model, nnx.RngState))  # no RNG stream in the state
  det = run(model, z_t, t, LABELS)
  drop = run(model, z_t, t, LABELS, key(1))
  np.testing.assert_array_equal(drop, run(model, z_t, t, LABELS, key(1)))
  assert max_diff(drop, run(model, z_t, t, LABELS, key(2))) > 1e-4
  assert max_diff(drop, det) > 1e-4


def test_split_merge_jit_round_trip(net):
  kind, _, model, z_t, t = net
  dropout_key = key(3)
  out = run(model, z_t, t, LABELS, dropout_key)  # jax.jit of nnx.merge(graphdef, state)(...)
  round_trip = nnx.merge(*nnx.split(model))
  np.testing.assert_array_equal(out, run(round_trip, z_t, t, LABELS, dropout_key))
  if kind == "transformer":  # network-independent: the stateful module under nnx.jit agrees
    stateful = nnx.jit(lambda net, z_t, t, k: net(z_t, t, LABELS, rngs=nnx.Rngs(dropout=k)))
    np.testing.assert_array_equal(out, stateful(model, z_t, t, dropout_key))


def test_bfloat16_compute_keeps_float32_params_and_logits(net):
  _, _, model, z_t, t = net
  model_bf16 = variant(model, dtype="bfloat16")
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model_bf16))} == {jnp.dtype(jnp.float32)}
  logits, ref = run(model_bf16, z_t, t, LABELS), run(model, z_t, t, LABELS)
  assert logits.dtype == jnp.float32
  # bf16 rounding (2^-8 relative) compounded over the layers of a perturbed net stays ~1e-2;
  # a wrong cast or a dropped term gives an O(1) relative error.
  rel = float(jnp.linalg.norm(logits - ref) / jnp.linalg.norm(ref))
  assert 0.0 < rel < 0.1


def test_remat_forward_matches(net):
  _, _, model, z_t, t = net
  dropout_key = key(4)
  np.testing.assert_allclose(run(variant(model, remat=True), z_t, t, LABELS, dropout_key),
                             run(model, z_t, t, LABELS, dropout_key), rtol=1e-5, atol=1e-5)


def test_transformer_remat_gradients_match():
  model = perturb(build("transformer", num_layers=1))
  z_t, t = inputs("transformer")

  def value_and_grad(model):
    graphdef, state = nnx.split(model)

    def loss(state):
      logits = nnx.merge(graphdef, state)(z_t, t)
      return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    return jax.jit(jax.value_and_grad(loss))(state)

  value, grads = value_and_grad(model)
  value_remat, grads_remat = value_and_grad(variant(model, remat=True))
  np.testing.assert_allclose(value_remat, value, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               grads_remat, grads)


def test_transformer_bidirectional_and_causal():
  model = perturb(build("transformer", **BASE))
  z_t, t = inputs("transformer")
  j = 5
  z_other = z_t.at[:, j].set((z_t[:, j] + 1) % 28)
  for causal in (False, True):
    m = variant(model, causal=causal)
    diff = jnp.abs(run(m, z_t, t, LABELS) - run(m, z_other, t, LABELS)).max(axis=(0, 2))  # [L]
    assert float(diff[j:].min()) > 1e-4
    if causal:
      np.testing.assert_array_equal(diff[:j], 0.0)
    else:
      assert float(diff[:j].min()) > 1e-4


@pytest.mark.parametrize("time_conditioning", [True, False])
def test_transformer_head_at_gathered_positions_and_outside_embed(time_conditioning):
  model = perturb(build("transformer", outside_embed=True, time_conditioning=time_conditioning))
  assert model.embed.embedding.shape == (28, 16)  # V + 1 rows, head_dim features
  z_t, t = inputs("transformer")
  rows = jnp.array([0, 5, 7, 3 + z_t.shape[1], 1 + z_t.shape[1]])  # flat positions b * L + l

  def both(net, z_t, t):
    features = net.head_features(z_t, t)  # [B, L, D + C]
    return net(z_t, t), net.head(features.reshape(-1, features.shape[-1])[rows])

  full, selected = nnx.jit(both)(model, z_t, t)
  np.testing.assert_allclose(selected, full.reshape(-1, full.shape[-1])[rows], rtol=1e-6, atol=1e-5)


def test_rope_matches_complex_rotation_and_is_relative():
  head_dim, length = 8, 12
  cos, sin = embeddings.rope_tables(length, head_dim, 1e4)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((1, length, 1, head_dim)), jnp.float32)
  with jax.enable_x64(True):
    pairs = np.asarray(x, np.float64)[0, :, 0].reshape(length, -1, 2) @ np.array([1, 1j])
    freqs = 1e4 ** (-np.arange(0, head_dim, 2) / head_dim)
    rotated = pairs * np.exp(1j * np.outer(np.arange(length), freqs))
    expected = np.stack([rotated.real, rotated.imag], -1).reshape(length, head_dim)
  np.testing.assert_allclose(embeddings.apply_rope(x, cos, sin)[0, :, 0], expected, atol=1e-5)
  # <R_i q, R_j k> depends only on i - j.
  q, k = jnp.asarray(rng.standard_normal((2, 1, 1, 1, head_dim)), jnp.float32)
  rq, rk = (embeddings.apply_rope(jnp.broadcast_to(v, x.shape), cos, sin)[0, :, 0] for v in (q, k))
  dots = np.asarray(rq @ rk.T)  # [L, L]
  for offset in (-3, 0, 2):
    np.testing.assert_allclose(np.diagonal(dots, offset), np.diagonal(dots, offset)[0], atol=1e-5)


def test_every_parameter_is_partitioned_for_fsdp(net):
  kind, model, _, _, _ = net
  rules = dict(axes.RULES)
  params = nnx.state(model, nnx.Param)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  specs = jax.tree.leaves(nnx.get_partition_spec(params), is_leaf=is_spec)
  assert len(specs) == len(jax.tree.leaves(params))
  for spec, p in zip(specs, jax.tree.leaves(params)):
    assert len(spec) == p.ndim and any(spec), (kind, spec, p.shape)
    assert set(spec) <= set(rules) | {None}, (kind, spec)
    mesh_axes = [rules[name] for name in spec if name is not None and rules[name]]
    assert len(mesh_axes) == len(set(mesh_axes)), (kind, spec)


def num_params(model_fn, fsdp: int = 8) -> int:
  """Parameter count without allocation; also checks every dim mapped to 'fsdp' splits evenly."""
  params = nnx.state(nnx.eval_shape(model_fn), nnx.Param)
  rules = dict(axes.RULES)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  specs = jax.tree.leaves(nnx.get_partition_spec(params), is_leaf=is_spec)
  for spec, p in zip(specs, jax.tree.leaves(params)):
    for name, size in zip(spec, p.shape):
      assert rules.get(name) != "fsdp" or size % fsdp == 0, (spec, p.shape)
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def test_md4_small_parameter_count_matches_closed_form():
  vocab, d, layers, hidden, c = 50257, 768, 12, 2048, 64  # c = cond width = head_dim
  block = 4 * d * d + 3 * d * hidden + c * 6 * d + 6 * d  # attention, gated MLP, adaLN
  non_embedding = layers * block + (c * 4 * c + 4 * c) + (4 * c * c + c) + (c * 2 * d + 2 * d)
  embedding = (vocab + 1) * d + d * vocab  # input table (V + 1 rows) and output head
  count = num_params(lambda: Transformer(
      TransformerConfig(vocab_size=vocab, **TRANSFORMER_SIZES["small"]), rngs=nnx.Rngs(0)))
  assert count == non_embedding + embedding == 165_857_344
  assert non_embedding == 88_661_824  # GPT-2-small body (85.0M) + adaLN-Zero (3.6M)


def test_cifar_unet_parameter_count_matches_closed_form():
  f, n, ch, vocab = 128, 32, 3, 256
  norm = lambda k: 2 * k
  conv = lambda i, o: 9 * i * o + o
  resblock = lambda i: (norm(i) + conv(i, f) + f * f + norm(f) + conv(f, f)
                        + (i * f + f if i != f else 0))
  attention = norm(f) + 4 * (f * f + f)
  expected = ((vocab + 1) * f + (f * 4 * f + 4 * f) + (4 * f * f + f) + conv(ch * f, f)
              + n * resblock(f) + 2 * resblock(f) + attention + (n + 1) * resblock(2 * f)
              + norm(f) + conv(f, ch * vocab))
  count = num_params(lambda: UNet(UNetConfig(**UNET_SIZES["cifar10"]), rngs=nnx.Rngs(0)))
  assert count == expected == 28_427_520  # paper: 28M


@pytest.mark.parametrize("kind, kwargs", [
    ("transformer", dict(vocab_size=27, num_layers=2, num_heads=3, width=32)),  # 32 % 3
    ("transformer", dict(vocab_size=27, num_layers=2, num_heads=2, width=32, mlp_type="relu")),
    ("transformer", dict(vocab_size=27, num_layers=2, num_heads=2, width=32, dropout=1.0)),
    ("transformer", dict(vocab_size=27, num_layers=2, num_heads=2, width=32, dtype="float16")),
    ("transformer", dict(vocab_size=27, num_layers=0, num_heads=2, width=32)),
    ("transformer", dict(vocab_size=27, num_layers=2, num_heads=2)),  # missing width
    ("unet", dict(feature_dim=30, num_layers=2)),  # 30 % 32 groups
    ("uvit", dict(feature_dim=32, num_layers=1, num_groups=8, image_size=9)),  # 9 % patch 2
    ("uvit", dict(feature_dim=32, num_layers=1, num_groups=8, dit_width=64, dit_heads=3)),
    ("unet", dict(feature_dim=32, num_layers=2, num_group=8)),  # unknown field
    ("convnet", dict()),  # unknown kind
])
def test_bad_config_raises_value_error(kind, kwargs):
  with pytest.raises(ValueError):
    make_network(kind, kwargs, rngs=nnx.Rngs(0))


def test_bad_inputs_raise_value_error():
  model = build("transformer")
  z_t, t = inputs("transformer")
  with pytest.raises(ValueError, match="num_classes=0"):
    model(z_t, t, LABELS)
  with pytest.raises(ValueError, match=r"t must have shape"):
    model(z_t, t[:1])
  with pytest.raises(ValueError, match=r"\[B, 4, 4, C\]"):
    build("uvit")(jnp.zeros((2, 8, 8, 3), jnp.int32), t)


@pytest.mark.parametrize("kind", ["transformer", "uvit"])
def test_scanned_blocks_match_unrolled(kind):
  """scan_layers=True (one stacked block under jax.lax.scan) computes what the unrolled blocks compute, with the
  same parameters stacked, dropout and remat included; gradients too; the stacked axis is never sharded."""
  layers_field = "num_layers" if kind == "transformer" else "dit_layers"
  model = perturb(build(kind, **BASE, **{layers_field: 3}))
  z_t, t = inputs(kind)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  stacked = stack_blocks(params)

  def scanned(**overrides):
    config = dataclasses.replace(model.config, scan_layers=True, **overrides)
    abstract = nnx.eval_shape(lambda: type(model)(config, rngs=nnx.Rngs(0)))
    state = nnx.state(abstract, nnx.Param)
    unstacked_specs = jax.tree.leaves(nnx.get_partition_spec(nnx.state(model, nnx.Param)),
                                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert len(jax.tree.leaves(state)) < len(unstacked_specs)
    nnx.replace_by_pure_dict(state, stacked)
    return nnx.merge(nnx.graphdef(abstract), state)

  dropout_key = key(5)
  for remat in (False, True):
    np.testing.assert_allclose(run(scanned(remat=remat), z_t, t, LABELS, dropout_key),
                               run(variant(model, remat=remat), z_t, t, LABELS, dropout_key), rtol=1e-5, atol=1e-5)
  specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(scanned(), nnx.Param)))
  block_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert any(spec[0] is None and len(spec) == 3 for spec in block_specs)  # [layers, in, out] kernels
  if kind == "transformer":
    def grads(module):
      graphdef, state = nnx.split(module)
      loss = lambda state: jnp.mean(jax.nn.log_softmax(nnx.merge(graphdef, state)(z_t, t, LABELS))[..., 0])
      return nnx.to_pure_dict(jax.jit(jax.grad(loss))(state))

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                 grads(scanned()), stack_blocks(grads(model)))
