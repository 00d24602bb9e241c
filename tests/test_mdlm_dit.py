"""nn.mdlm_dit (MDLM's DiT with SUBS): carry-over, the head at gathered positions, dropout, scanned blocks, FSDP
annotations and training, parameter counts of the released sizes, bad configs."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from md4_jax.model import make_model
from md4_jax.nn import axes, make_network
from md4_jax.nn.mdlm_dit import MDLM_DIT_SIZES, MDLMDiT, MDLMDiTConfig, NEG_INF
from block_layout import stack_blocks
from train_configs import tiny_config, train_and_restore

V = 11
MICRO = dict(vocab_size=V, num_layers=3, num_heads=2, width=16, cond_dim=8)


def perturbed(**overrides) -> MDLMDiT:
  """A micro DiT with every parameter random (its zero-initialised layers made active)."""
  model = MDLMDiT(MDLMDiTConfig(**{**MICRO, **overrides}), rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: jnp.asarray(np.asarray(p) + 0.2 * rng.standard_normal(p.shape), p.dtype), params)
  return nnx.merge(graphdef, params, rest)


def inputs():
  z = np.array([[V, 3, V, 5, 0, V], [1, V, V, V, 10, 2]], np.int32)
  return jnp.asarray(z), jnp.array([0.4, 0.9], jnp.float32)


def test_subs_carries_unmasked_tokens_over_and_the_head_matches_at_masked_positions():
  model = perturbed(time_conditioning=True)
  z, t = inputs()
  logits = np.asarray(model(z, t))
  unmasked = np.asarray(z) != V
  expected = np.where(np.arange(V) == np.asarray(z)[..., None], 0.0, NEG_INF)
  np.testing.assert_array_equal(logits[unmasked], expected[unmasked])
  assert np.all(logits[~unmasked] > NEG_INF / 2)  # free logits where masked; the mask column dropped (V outputs)
  features = model.head_features(z, t)  # [B, L, D + C]
  rows = np.asarray(model.head(features.reshape(-1, features.shape[-1]))).reshape(logits.shape)
  np.testing.assert_allclose(rows[~unmasked], logits[~unmasked], rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(model(z, t[::-1]))[~unmasked] - logits[~unmasked]).max() > 1e-3  # t is an input
  untimed = perturbed(time_conditioning=False)
  np.testing.assert_array_equal(untimed(z, t), untimed(z, t[::-1]))  # sigma = 0 whatever t


def test_dropout_only_with_rngs_and_scanned_blocks_match_unrolled():
  model = perturbed(dropout=0.3)
  z, t = inputs()
  det = model(z, t)
  np.testing.assert_array_equal(det, model(z, t))
  drop = model(z, t, rngs=nnx.Rngs(dropout=1))
  assert float(jnp.abs(drop - det).max()) > 1e-4
  params = stack_blocks(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  for remat in (False, True):
    config = dataclasses.replace(model.config, scan_layers=True, remat=remat)
    abstract = nnx.eval_shape(lambda: MDLMDiT(config, rngs=nnx.Rngs(0)))
    state = nnx.state(abstract, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    scanned = nnx.merge(nnx.graphdef(abstract), state)
    np.testing.assert_allclose(scanned(z, t), det, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scanned(z, t, rngs=nnx.Rngs(dropout=1)), drop, rtol=1e-5, atol=1e-5)


def test_every_parameter_is_partitioned_for_fsdp():
  rules = dict(axes.RULES)
  params = nnx.state(perturbed(), nnx.Param)
  specs = jax.tree.leaves(nnx.get_partition_spec(params), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert len(specs) == len(jax.tree.leaves(params))
  for spec, p in zip(specs, jax.tree.leaves(params)):
    assert len(spec) == p.ndim and set(spec) <= set(rules) | {None}, (spec, p.shape)
    mesh_axes = [rules[name] for name in spec if name is not None and rules[name]]
    assert len(mesh_axes) == len(set(mesh_axes)), spec


@pytest.mark.parametrize("size, expected", [("small", 169_627_218), ("reduced", 13_592_018)])
def test_parameter_counts_of_the_released_sizes(size, expected):
  """mdlm_dit.md: ~169.6M (mdlm-owt) and 13.6M (ReMDM's reduced net), from the closed form of the layers."""
  sizes, v1 = MDLM_DIT_SIZES[size], 50258
  d, c, n = sizes["width"], sizes["cond_dim"], sizes["num_layers"]
  block = 2 * d + 3 * d * d + d * d + (d * 4 * d + 4 * d) + (4 * d * d + d) + (c * 6 * d + 6 * d)
  closed = v1 * d + (256 * c + c) + (c * c + c) + n * block + d + (d * v1 + v1) + (c * 2 * d + 2 * d)
  abstract = nnx.eval_shape(lambda: MDLMDiT(MDLMDiTConfig(vocab_size=50257, **MDLM_DIT_SIZES[size]), rngs=nnx.Rngs(0)))
  count = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert count == closed == expected


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=3), "no label input"),
    (dict(width=12, num_heads=4), "must be even for RoPE"),
    (dict(width=16, num_heads=3), "divisible"),
    (dict(dropout=1.0), "dropout"),
    (dict(mlp_type="glu"), "unknown MDLMDiTConfig fields"),
])
def test_bad_config_raises_value_error(kwargs, match):
  with pytest.raises(ValueError, match=match):
    make_network("mdlm_dit", {**MICRO, **kwargs}, rngs=nnx.Rngs(0))


def mdlm_tiny_config(**overrides):
  """tiny_config (chars data, L = 32) with the network an mdlm_dit."""
  config = tiny_config(**overrides)
  config.model.kind, config.model.size = "mdlm_dit", None
  config.model.network = ml_collections.ConfigDict(dict(
      num_layers=2, num_heads=2, width=32, cond_dim=16, dropout=0.0, time_conditioning=False, dtype="float32",
      remat=False, attention="xla", scan_layers=False))
  return config


def test_udlm_objective_is_refused():
  config = mdlm_tiny_config()
  config.diffusion.objective = "udlm"
  from md4_jax.data import dataset_info
  with pytest.raises(ValueError, match="needs a masked-diffusion objective"):
    make_model(config, dataset_info(config.data), 0)


def test_fsdp_training_matches_data_parallel(tmp_path, scan_layers=True):
  """The one training loop with fsdp = 8 against data = 8 on 8 devices, blocks scanned: the same losses and
  parameters, the width axis of the block kernels split over fsdp, the leading layer axis whole."""
  curves, params = {}, {}
  for fsdp in (1, 8):
    workdir = str(tmp_path / f"fsdp{fsdp}")
    config = mdlm_tiny_config(**{"mesh.data": 8 // fsdp, "mesh.fsdp": fsdp, "train.num_steps": 4,
                                 "train.checkpoint_every": 4, "train.log_every": 1})
    config.model.network.scan_layers = scan_layers
    lines, params[fsdp] = train_and_restore(config, workdir, 4)
    curves[fsdp] = [[line[k] for k in ("train/objective", "train/grad_norm")] for line in lines]
  blocks = params[8]["network"]["blocks"] if scan_layers else params[8]["network"]["blocks"][0]
  assert tuple(blocks["attn_qkv"]["kernel"].sharding.spec) == ((None,) if scan_layers else ()) + ("fsdp", None)
  assert len(curves[8]) == 4 and np.all(np.isfinite(curves[8]))
  np.testing.assert_allclose(curves[8], curves[1], rtol=2e-5)
  for a, b in zip(jax.tree.leaves(params[8]), jax.tree.leaves(params[1]), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
