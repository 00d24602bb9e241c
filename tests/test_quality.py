"""Sample quality: entropy, generative perplexity (EOS mask, AR scorer), MAUVE, Frechet distance / FID, features."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax.evaluation import fid, quality
from md4_jax.nn import Transformer, TransformerConfig
from eval_fixtures import ar_config, save_initial_checkpoint
from train_configs import tiny_config


def test_entropy_closed_forms():
  tokens = np.array([[7] * 8, list(range(8)), [0, 0, 1, 1, 2, 2, 3, 3], [5, 5, 5, 5, 5, 5, 1, 2]])
  expected = [0.0, math.log(8), math.log(4), -(0.75 * math.log(0.75) + 2 * 0.125 * math.log(0.125))]
  np.testing.assert_allclose(quality.entropy(tokens), expected, rtol=1e-12, atol=1e-15)
  with pytest.raises(ValueError, match="shape"):
    quality.entropy(np.zeros(8, np.int32))


def test_gen_ppl_of_a_uniform_scorer_is_the_vocabulary_size():
  vocab_size = 50
  tokens = np.random.default_rng(0).integers(0, vocab_size, (6, 16))
  uniform = lambda x: np.full(x.shape, -math.log(vocab_size))
  assert quality.gen_ppl(uniform, tokens) == pytest.approx(vocab_size, rel=1e-12)
  assert quality.gen_ppl(uniform, tokens, eos_id=3, batch_size=4) == pytest.approx(vocab_size, rel=1e-12)


def test_gen_ppl_is_token_weighted_with_remdm_eos_mask():
  eos = 9
  tokens = np.array([[1, 2, eos, eos, 4],    # weights 1 1 1 0 1: the first EOS counts, later ones do not
                     [eos, 3, 3, eos, eos],  # 1 1 1 0 0
                     [1, 2, 3, 4, 5]])       # no EOS: all count
  np.testing.assert_array_equal(quality.gen_ppl_weights(tokens, eos),
                                [[1, 1, 1, 0, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  log_p = -np.arange(1, 16, dtype=np.float64).reshape(3, 5) / 10  # NLL of token n: (n + 1) / 10
  log_p[2, 0] = np.nan  # an unscored token
  weights = np.array([[1, 1, 1, 0, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], np.float64)
  expected = math.exp(-np.sum(np.nan_to_num(log_p) * weights) / weights.sum())  # one mean over the set
  assert quality.gen_ppl(lambda x: log_p[:len(x)], tokens, eos_id=eos) == pytest.approx(expected, rel=1e-12)
  per_sequence = np.mean([math.exp(-np.nansum(l * w) / w.sum()) for l, w in zip(log_p, weights)])
  assert abs(expected - per_sequence) > 1e-3  # the set-level mean is not a mean of per-sample perplexities
  with pytest.raises(ValueError, match="shape"):
    quality.gen_ppl(lambda x: log_p[:, :4], tokens)


def test_transformer_hidden_states_feed_the_head_and_are_causal():
  config = TransformerConfig(vocab_size=11, num_layers=2, num_heads=2, width=16, causal=True,
                             time_conditioning=False)
  z = np.random.default_rng(0).integers(0, 12, (3, 9))
  z_changed = z.copy()
  z_changed[:, 5] = (z[:, 5] + 1) % 12

  @jax.jit  # one compilation for everything (eager construction compiles op by op)
  def outputs(z, z_changed):
    net = Transformer(config, rngs=nnx.Rngs(0))
    net.final.head.kernel[...] = jax.random.normal(jax.random.key(1), net.final.head.kernel.shape)  # not zero
    t = jnp.zeros(3)
    h = net.hidden_states(z, t)
    return net(z, t), net.final(h, None), h, net.hidden_states(z_changed, t)

  logits, head_of_hidden, h, h_changed = outputs(z, z_changed)
  assert h.shape == (3, 9, 16) and h.dtype == jnp.float32
  np.testing.assert_array_equal(logits, head_of_hidden)
  np.testing.assert_array_equal(h_changed[:, :5], h[:, :5])  # positions before 5 do not see it
  assert not np.allclose(h_changed[:, 5:], h[:, 5:])


@pytest.fixture(scope="module")
def ar_checkpoint(tmp_path_factory):
  config = ar_config()
  workdir = str(tmp_path_factory.mktemp("ar"))
  save_initial_checkpoint(config, workdir)
  return config, workdir


def test_ar_scorer_of_a_uniform_model_gives_the_vocabulary_size(ar_checkpoint):
  config, workdir = ar_checkpoint
  scorer = quality.ar_scorer(config, workdir)
  tokens = np.random.default_rng(0).integers(0, 27, (20, 32))  # 20 rows: two batches of 16, the last padded
  np.testing.assert_allclose(scorer(tokens), -math.log(27), rtol=1e-6)
  assert quality.gen_ppl(scorer, tokens) == pytest.approx(27, rel=1e-6)
  with pytest.raises(ValueError, match=r"\[0, 27\)"):
    scorer(np.full((2, 32), 27))


def test_ar_features_are_the_last_position_and_batch_independent(ar_checkpoint):
  config, workdir = ar_checkpoint
  features = quality.ar_scorer(config, workdir).features
  tokens = np.random.default_rng(1).integers(0, 27, (5, 32))
  out = features(tokens)
  assert out.shape == (5, 32) and np.all(np.isfinite(out))
  np.testing.assert_allclose(features(tokens[3:4]), out[3:4], rtol=1e-5, atol=1e-6)
  changed = tokens.copy()
  changed[:, -1] = (changed[:, -1] + 1) % 27
  assert not np.allclose(features(changed), out)  # the last token is seen


def test_load_scorer_falls_back_to_the_ar_model(ar_checkpoint, tmp_path, capsys):
  config, workdir = ar_checkpoint
  scorer = quality.load_scorer(str(tmp_path / "gpt2-large"), config, workdir)
  assert scorer.name.startswith("ar:") and "GPT-2 Large unavailable" in capsys.readouterr().out
  with pytest.raises(ValueError, match="no scorer"):
    quality.load_scorer(str(tmp_path / "gpt2-large"))
  with pytest.raises(ValueError, match="objective='ar'"):
    quality.ar_scorer(tiny_config(), workdir)


def test_text_quality_reports_the_three_numbers(ar_checkpoint):
  pytest.importorskip("mauve")
  config, workdir = ar_checkpoint
  scorer = quality.ar_scorer(config, workdir)
  rng = np.random.default_rng(2)
  samples, references = rng.integers(0, 27, (40, 32)), rng.integers(0, 27, (40, 32))
  result = quality.text_quality(samples, scorer, scorer.features(references))
  assert result["gen_ppl"] == pytest.approx(27, rel=1e-6)
  assert result["entropy"] == pytest.approx(quality.entropy(samples).mean())
  assert 0 < result["mauve"] <= 1


def test_mauve_of_identical_and_of_separated_feature_sets():
  pytest.importorskip("mauve")
  rng = np.random.default_rng(0)
  p = rng.standard_normal((300, 8))
  assert quality.mauve_score(p, p) > 0.99
  far = rng.standard_normal((300, 8)) + 20.0
  assert quality.mauve_score(p, far) < 0.05
  with pytest.raises(ValueError, match="same D"):
    quality.mauve_score(p, far[:, :4])


def test_frechet_distance_matches_closed_forms():
  # 2 x 2, non-commuting: tr (S1 S2)^(1/2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
  s1, s2 = np.array([[2.0, 0.6], [0.6, 1.0]]), np.array([[1.0, -0.3], [-0.3, 0.5]])
  mu1, mu2 = np.array([0.5, -1.0]), np.array([1.5, 2.0])
  trace_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
  expected = 1.0 + 9.0 + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
  assert fid.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-12)
  # Diagonal (commuting) covariances, one of them singular: sum (sqrt(a) - sqrt(b))^2.
  a, b = np.array([1.0, 4.0, 0.0, 9.0]), np.array([4.0, 1.0, 2.0, 9.0])
  assert fid.frechet_distance(np.zeros(4), np.diag(a), np.zeros(4), np.diag(b)) == pytest.approx(
      np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-12)
  # A rotated copy: equal covariances have distance 0.
  q = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 6)))[0]
  s = q @ np.diag(np.arange(1.0, 7.0)) @ q.T
  assert abs(fid.frechet_distance(np.zeros(6), s, np.zeros(6), s)) < 1e-10
  with pytest.raises(ValueError, match="one D"):
    fid.frechet_distance(np.zeros(2), s1, np.zeros(3), s2)


def test_fid_of_random_conv_features():
  rng = np.random.default_rng(0)
  dark_1, dark_2 = rng.integers(0, 128, (2, 300, 8, 8, 1))
  bright = rng.integers(128, 256, (300, 8, 8, 1))
  features = fid.random_conv_features(dark_1)
  assert features.shape == (300, fid.FEATURE_WIDTHS[-1])
  np.testing.assert_array_equal(fid.random_conv_features(dark_1), features)  # deterministic
  assert abs(fid.fid(dark_1, dark_1)) < 1e-8
  assert abs(fid.fid(dark_1, dark_1[::-1])) < 1e-8  # a set, not a sequence
  same, different = fid.fid(dark_1, dark_2), fid.fid(dark_1, bright)
  assert different > 20 * same, (same, different)
  assert fid.fid(bright, dark_1) == pytest.approx(different, rel=1e-9)
  assert fid.random_conv_features(rng.integers(0, 256, (4, 8, 8, 3))).shape == (4, fid.FEATURE_WIDTHS[-1])
  with pytest.raises(ValueError, match=r"\[0, 255\]"):
    fid.random_conv_features(np.full((2, 8, 8, 1), 300))
