"""md4_jax.generate, the one generation path: the token ids of the paths it replaced (recorded from commit 2b81b89
in tests/old_sample_ids.json: sample_lib.generate, sample_writer.generate (the training hook), molecules.generate)
at fixed seeds, for MD4 ancestral and ReMDM, GenMD4, prompts, labels and guides; example keys independent of the
batch size and device count; the one writer; load_denoiser."""
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from md4_jax.training import config_base, sharding
from md4_jax import generate, sampling
from md4_jax.data import DataInfo
from md4_jax.model import make_model
from test_head_at_drawn import _config as _sampler  # sampling.default_config(name), T = 16, fields set

V, L = 11, 12
OLD = json.load(open(os.path.join(os.path.dirname(__file__), "old_sample_ids.json")))
MASKS = np.full((8, L), V, np.int32)
PROMPTS = MASKS.copy()
PROMPTS[:, :3] = [[1, 2, 3]]
PROMPTS[::2, 7] = 4


def _model(objective="md4", num_classes=3, devices=1):
  """The recording's model: a tiny transformer on DataInfo(V=11, L=12), every parameter perturbed."""
  config = config_base.get_base_config()
  config.model.network.update(num_layers=1, num_heads=2, width=16)
  config.diffusion.objective = objective
  config.mesh.data = 1 if devices == 1 else -1
  graphdef, params = nnx.split(make_model(config, DataInfo(V, (L,), num_classes, lambda x: x), 0), nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [p + 0.7 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  mesh = sharding.make_mesh(config.mesh)
  return graphdef, jax.device_put(params, sharding.replicated(mesh)), mesh


SAMPLERS = {"ancestral": _sampler("ancestral"), "remdm_loop": _sampler("remdm"),
            "remdm_conf_top_p": _sampler("remdm", strategy="conf", top_p=0.8)}
CASES = [("md4", "ancestral"), ("md4", "remdm_loop"), ("md4", "remdm_conf_top_p"), ("genmd4", "ancestral")]


@pytest.mark.parametrize("objective,name", CASES)
def test_the_binaries_samples_are_unchanged(objective, name):
  """sample_lib.generate's ids (one batch of 8, --seed=1): all masks, prompts, a label; and with batch_size=4 the
  new path still gives the one-batch ids (the old path's second batch of 4 came from another key)."""
  graphdef, params, mesh = _model(objective)
  run = lambda z, **kw: generate.generate(graphdef, params, SAMPLERS[name], z, generate.seed_key(1), mesh=mesh,
                                          **kw)[0]
  np.testing.assert_array_equal(run(MASKS, batch_size=8), OLD[f"lib/{objective}/{name}/masks"])
  np.testing.assert_array_equal(run(PROMPTS), OLD[f"lib/{objective}/{name}/prompts"])
  np.testing.assert_array_equal(run(MASKS, label=2), OLD[f"lib_label2/{objective}/{name}/masks"])
  batched = run(MASKS, batch_size=4)
  np.testing.assert_array_equal(batched, OLD[f"lib/{objective}/{name}/masks"])
  np.testing.assert_array_equal(batched[:4], OLD[f"lib_batch4/{objective}/{name}/masks"][:4])
  assert (batched[4:] != np.asarray(OLD[f"lib_batch4/{objective}/{name}/masks"][4:])).any()


@pytest.mark.parametrize("objective,name", CASES)
def test_the_training_hooks_samples_are_unchanged(objective, name):
  graphdef, params, mesh = _model(objective)
  tokens, stats = generate.generate(graphdef, params, SAMPLERS[name], MASKS[:2], jax.random.key(7), mesh=mesh)
  np.testing.assert_array_equal(tokens, OLD[f"hook/{objective}/{name}"])
  assert stats["batches"] == 1 and 0 < stats["nfe"] <= 17


@pytest.mark.parametrize("name", ["ancestral", "remdm_rescale"])
def test_molecules_samples_are_unchanged_for_every_guide(name):
  """molecules.generate (label 1, one batch of 6, --seeds 0) for MD4: unguided, D-CFG at gamma 1 and 2, D-CBG."""
  sampler = _sampler("remdm", strategy="rescale", eta=0.5) if name == "remdm_rescale" else _sampler("ancestral")
  graphdef, params, mesh = _model("md4", num_classes=2)
  classifier_graphdef, classifier_params, _ = _model("classifier", num_classes=2)
  for guide in (generate.Guide("none"), generate.Guide("cfg", 1.0), generate.Guide("cfg", 2.0),
                generate.Guide("cbg", 3.0, (classifier_graphdef, classifier_params))):
    label = None if guide.kind == "none" else 1
    tokens, _ = generate.generate(graphdef, params, sampler, MASKS[:6], generate.seed_key(0), mesh=mesh,
                                  batch_size=6, label=label, guide=guide)
    np.testing.assert_array_equal(tokens, OLD[f"molecules/md4/{name}/{guide.kind}{guide.gamma}"])


def test_molecules_with_genmd4_now_uses_the_learned_exponents():
  """The old molecules path never passed genmd4_w: a GenMD4 model came out exactly as an MD4 model with the
  same network (the recording shows it). The new path samples with the model's exponents."""
  old = OLD["molecules_old_wrong/genmd4/ancestral/none0.0"]
  np.testing.assert_array_equal(old, OLD["molecules/md4/ancestral/none0.0"])
  graphdef, params, mesh = _model("genmd4", num_classes=2)
  tokens, _ = generate.generate(graphdef, params, _sampler("ancestral"), MASKS[:6], generate.seed_key(0), mesh=mesh)
  w = nnx.merge(graphdef, params).genmd4_w
  expected = sampling.sample(generate.denoiser(graphdef, params), jax.vmap(jax.random.fold_in, (None, 0))(
      generate.seed_key(0), np.arange(6)), MASKS[:6], _sampler("ancestral"), genmd4_w=w)
  np.testing.assert_array_equal(tokens, expected)
  assert (tokens != np.asarray(old)).any()


def test_eight_devices_and_padding_give_the_one_device_samples():
  graphdef, params, mesh = _model("md4", devices=8)
  assert mesh.size == 8
  tokens, stats = generate.generate(graphdef, params, SAMPLERS["remdm_loop"], PROMPTS[:5], generate.seed_key(1),
                                    mesh=mesh, batch_size=8)
  np.testing.assert_array_equal(tokens, OLD["lib/md4/remdm_loop/prompts"][:5])
  with pytest.raises(ValueError, match="batch_size=4 must be a positive multiple of the 8 devices"):
    generate.generate(graphdef, params, SAMPLERS["ancestral"], MASKS, generate.seed_key(1), mesh=mesh, batch_size=4)


def test_udlm_batches_use_one_key_each():
  """A uniform-noise model draws batch i from fold_in(key, i) (its sampler's noise is not per example)."""
  from md4_jax import udlm  # pylint: disable=g-import-not-at-top
  graphdef, params, mesh = _model("udlm")
  config = _sampler("ancestral")
  tokens, stats = generate.generate(graphdef, params, config, MASKS, jax.random.key(3), mesh=mesh, batch_size=4)
  for i in range(2):
    expected = udlm.sample(generate.denoiser(graphdef, params), jax.random.fold_in(jax.random.key(3), i),
                           MASKS[4 * i:4 * i + 4], config)
    np.testing.assert_array_equal(tokens[4 * i:4 * i + 4], expected)
  assert stats["nfe"] == 16
  with pytest.raises(ValueError, match="a 'udlm' .uniform-noise. model samples with sampler.name='ancestral' only"):
    generate.generate(graphdef, params, SAMPLERS["remdm_loop"], MASKS, jax.random.key(3), mesh=mesh)
  with pytest.raises(ValueError, match="guides apply to masked models, not to a 'udlm' model"):
    generate.generate(graphdef, params, config, MASKS, jax.random.key(3), mesh=mesh, label=1,
                      guide=generate.Guide("cfg", 2.0))


def test_bad_requests_fail_with_the_valid_options():
  graphdef, params, mesh = _model("md4", num_classes=0)
  with pytest.raises(ValueError, match=r"label=1 is not a class of this model; valid: none \(unconditional data\)"):
    generate.generate(graphdef, params, SAMPLERS["ancestral"], MASKS, jax.random.key(0), mesh=mesh, label=1)
  with pytest.raises(ValueError, match="guide 'cfg' steers toward a label; pass label="):
    generate.generate(graphdef, params, SAMPLERS["ancestral"], MASKS, jax.random.key(0), mesh=mesh,
                      guide=generate.Guide("cfg", 2.0))
  with pytest.raises(ValueError, match="unknown guide 'cfgg'; valid: none, cfg, cbg"):
    generate.Guide("cfgg")
  classifier_graphdef, classifier_params, _ = _model("classifier", num_classes=2)
  with pytest.raises(ValueError, match="a noisy property classifier .for D-CBG.; the diffusion samplers do not"):
    generate.generate(classifier_graphdef, classifier_params, SAMPLERS["ancestral"], MASKS, jax.random.key(0),
                      mesh=mesh)


def test_write_samples_text_and_jsonl(tmp_path):
  info = DataInfo(3, (4,), 0, lambda x: np.array(["".join("ab\n"[i] for i in row) for row in x]))
  tokens = np.array([[0, 1, 2, 0], [1, 1, 1, 1]], np.int32)
  txt, jsonl = generate.write_samples(str(tmp_path / "s"), tokens, info)
  assert open(txt).read() == "ab\\na\nbbbb\n"
  records = [json.loads(line) for line in open(jsonl)]
  assert records == [{"index": 0, "tokens": [0, 1, 2, 0], "text": "ab\na"},
                     {"index": 1, "tokens": [1, 1, 1, 1], "text": "bbbb"}]
  assert sorted(os.listdir(tmp_path)) == ["s.jsonl", "s.txt"]


def test_load_denoiser_needs_a_self_describing_workdir(tmp_path):
  with pytest.raises(ValueError, match="config.json is missing"):
    generate.load_denoiser(str(tmp_path))
