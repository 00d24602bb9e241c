"""Sample quality of text: unigram entropy, generative perplexity and MAUVE, as ReMDM measures them (remdm.md §3.1).

A scorer is an autoregressive model behind two functions of token ids [B, L]:
  score(tokens) -> log p(x_n | x_<n) [B, L] float64 (NaN where a token is not scored),
  features(tokens) -> [B, D] float32 (the last position's final hidden state, as MAUVE's featuriser).
The paper's scorer is GPT-2 Large (`gpt2_large_scorer`, through `transformers`, only if its weights are on disk);
without it, an autoregressive transformer trained by this codebase on the same data (`ar_scorer`,
config.diffusion.objective='ar'). Numbers under the in-repo scorer compare only with each other.
Only jax and numpy are imported here; mauve-text, torch and transformers are imported when used.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from md4_jax.training import experiment as experiment_lib
from md4_jax.training import sharding
from md4_jax.data import gpt2_tokenizer

ScoreFn = Callable[[np.ndarray], np.ndarray]    # tokens int [B, L] -> log p(x_n | x_<n) [B, L]
FeatureFn = Callable[[np.ndarray], np.ndarray]  # tokens int [B, L] -> features [B, D]


def _tokens_2d(tokens) -> np.ndarray:
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"tokens must be integer ids of shape [B, L]; got {tokens.dtype} {tokens.shape}")
  return tokens


def entropy(tokens) -> np.ndarray:
  """Unigram entropy in nats of each sequence [B, L] -> [B] (remdm.md §3.1).

  With c_v the count of id v in the sequence and p_v = c_v / L: sum_v -p_v ln p_v over the ids present
  (0 for a constant sequence, ln L for L distinct ids). ReMDM reports its mean over the samples.
  """
  tokens = _tokens_2d(tokens)
  out = np.zeros(tokens.shape[0])
  for i, row in enumerate(tokens):
    p = np.unique(row, return_counts=True)[1] / row.size
    out[i] = -np.sum(p * np.log(p))
  return out


def gen_ppl_weights(tokens, eos_id: int | None = None) -> np.ndarray:
  """Target weights [B, L] of generative perplexity: all 1 without eos_id; with it, ReMDM's mask (remdm.md §3.1):
  every non-EOS token plus the first EOS of the sequence count, later EOS tokens do not."""
  tokens = _tokens_2d(tokens)
  if eos_id is None:
    return np.ones(tokens.shape)
  is_eos = tokens == eos_id
  first_eos = is_eos & (np.cumsum(is_eos, axis=1) == 1)
  return (~is_eos | first_eos).astype(np.float64)


def gen_ppl(score_fn: ScoreFn, tokens, eos_id: int | None = None, batch_size: int | None = None) -> float:
  """Generative perplexity exp(sum_n w_n NLL_n / sum_n w_n) over the whole set, token-weighted (remdm.md §3.1).

  Args:
    score_fn: tokens [b, L] -> log p(x_n | x_<n) [b, L]; NaN entries (unscored tokens) get weight 0.
    tokens: int [B, L] samples in the scorer's vocabulary.
    eos_id: the end-of-sequence id for ReMDM's EOS mask (gen_ppl_weights), or None to weight all tokens.
    batch_size: rows per score_fn call (None: all at once).
  """
  tokens = _tokens_2d(tokens)
  step = batch_size or max(tokens.shape[0], 1)
  log_p = np.concatenate([np.asarray(score_fn(tokens[i:i + step]), np.float64)
                          for i in range(0, tokens.shape[0], step)])
  if log_p.shape != tokens.shape:
    raise ValueError(f"score_fn returned shape {log_p.shape}; expected {tokens.shape}")
  weights = gen_ppl_weights(tokens, eos_id) * np.isfinite(log_p)
  if not weights.sum():
    raise ValueError("no scored token: every target is masked out (EOS) or NaN")
  return float(np.exp(-np.sum(np.where(weights > 0, log_p, 0.0) * weights) / weights.sum()))


@dataclasses.dataclass(frozen=True)
class Scorer:
  """An autoregressive model as a scorer: `scorer(tokens)` = score(tokens); features for MAUVE."""
  name: str
  score: ScoreFn
  features: FeatureFn
  vocab_size: int

  def __call__(self, tokens) -> np.ndarray:
    return self.score(tokens)


def _batched_scorer(name: str, log_probs, last_hidden, vocab_size: int, batch_size: int,
                    what: str = "token ids") -> Scorer:
  """The Scorer of log_probs (score) and last_hidden (features), each called on batches of batch_size rows (the
  last padded with copies of row 0: one compilation) of tokens checked to be `what` in [0, vocab_size)."""

  def run(fn, tokens):
    tokens = _tokens_2d(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
      raise ValueError(f"{what} must lie in [0, {vocab_size}); got [{tokens.min()}, {tokens.max()}]")
    out = []
    for i in range(0, tokens.shape[0], batch_size):
      chunk = tokens[i:i + batch_size]
      pad = batch_size - chunk.shape[0]
      out.append(np.asarray(fn(np.concatenate([chunk, np.repeat(tokens[:1], pad, axis=0)])))[:chunk.shape[0]])
    return np.concatenate(out)

  return Scorer(name, lambda t: run(log_probs, t), lambda t: run(last_hidden, t), vocab_size)


def ar_scorer(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
              batch_size: int | None = None) -> Scorer:
  """The EMA parameters of an 'ar' checkpoint as a Scorer (one process; batches of batch_size, default
  config.train.eval_batch_size; parameters replicated over every device, whatever mesh the scorer trained on).

  score: log p(x_n | x_<n) for all L tokens, the first given the BOS (the mask id V, as in training).
  features: the last block's residual stream at the last position of [BOS, x] (Transformer.hidden_states).
  """
  if config.diffusion.objective != "ar":
    raise ValueError(f"ar_scorer needs a checkpoint of diffusion.objective='ar'; got {config.diffusion.objective!r}")
  batch_size = batch_size or config.train.eval_batch_size
  config = ml_collections.ConfigDict(config.to_dict())  # its training batch sizes fitted, so it builds anywhere
  config.mesh.data, config.mesh.fsdp = -1, 1
  config.train.batch_size, config.train.eval_batch_size = batch_size * config.train.grad_accum_steps, batch_size
  restored = experiment_lib.restore_ema(config, workdir, step)
  exp, params, step = restored.exp, restored.params, restored.step
  if batch_size % exp.mesh.size:
    raise ValueError(f"batch_size={batch_size} must be divisible by the {exp.mesh.size} devices")
  vocab_size, graphdef = exp.info.vocab_size, exp.graphdef
  batch_sharding = sharding.batch_sharding(exp.mesh)

  @jax.jit
  def log_probs(params, x):  # [B, L] -> [B, L]
    return nnx.merge(graphdef, params).ar_token_log_probs(x)

  @jax.jit
  def last_hidden(params, x):  # [B, L] -> [B, D]
    bos = jnp.full((x.shape[0], 1), vocab_size, x.dtype)
    h = nnx.merge(graphdef, params).network.hidden_states(jnp.concatenate([bos, x], axis=1), jnp.zeros(x.shape[:1]))
    return h[:, -1]

  place = lambda x: jax.device_put(x.astype(np.int32), batch_sharding)
  return _batched_scorer(f"ar:{os.path.abspath(workdir)}@{step}",
                         lambda x: np.asarray(log_probs(params, place(x)), np.float64),
                         lambda x: last_hidden(params, place(x)), vocab_size, batch_size)


def gpt2_large_scorer(path: str, batch_size: int = 8, device: str | None = None) -> Scorer:
  """GPT-2 Large from a local `transformers` checkpoint folder (config.json + weights); GPT-2 token ids in.

  score: EOS (<|endoftext|>) is prepended as BOS when L < 1024, so all L tokens are scored; at L = 1024 (the
  context) the first token is the context and its entry is NaN, as ReMDM scores its [BOS, ...] samples.
  features: the final hidden state (after ln_f) of the last token, the first 1024 tokens (MAUVE's featuriser).
  """
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise ValueError(f"no GPT-2 Large checkpoint at {path!r} (a transformers folder with config.json and weights)")
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"the GPT-2 Large scorer needs `pip install torch transformers` ({e})") from e
  device = device or ("cuda" if torch.cuda.is_available() else "cpu")
  model = transformers.GPT2LMHeadModel.from_pretrained(path, local_files_only=True).to(device).eval()
  context = model.config.n_positions

  def log_probs(x: np.ndarray) -> np.ndarray:
    if x.shape[1] > context:
      raise ValueError(f"GPT-2 Large scores at most its context, {context} tokens; got L = {x.shape[1]}")
    with torch.no_grad():
      ids = torch.as_tensor(x, dtype=torch.long, device=device)
      if x.shape[1] < context:
        ids = torch.cat([torch.full_like(ids[:, :1], gpt2_tokenizer.EOS_ID), ids], dim=1)
      logits = model(ids).logits[:, :-1].float()
      out = torch.gather(torch.log_softmax(logits, -1), -1, ids[:, 1:, None])[..., 0].double().cpu().numpy()
    return out if x.shape[1] < context else np.concatenate([np.full((x.shape[0], 1), np.nan), out], axis=1)

  def last_hidden(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
      ids = torch.as_tensor(x[:, :context], dtype=torch.long, device=device)
      return model.transformer(ids).last_hidden_state[:, -1].float().cpu().numpy()

  return _batched_scorer(f"gpt2-large:{os.path.abspath(path)}", log_probs, last_hidden, gpt2_tokenizer.VOCAB_SIZE,
                         batch_size, "GPT-2 token ids")


def load_scorer(gpt2_large_path: str | None = None, ar_config: ml_collections.ConfigDict | None = None,
                ar_workdir: str | None = None) -> Scorer:
  """GPT-2 Large if `gpt2_large_path` holds its weights and transformers is installed, else the 'ar' checkpoint."""
  reasons = []
  if gpt2_large_path:
    try:
      return gpt2_large_scorer(gpt2_large_path)
    except (ValueError, ImportError) as e:
      reasons.append(str(e))
  if ar_config is not None and ar_workdir:
    if reasons:
      print(f"GPT-2 Large unavailable ({reasons[0]}); scoring with the 'ar' model in {ar_workdir}", flush=True)
    return ar_scorer(ar_config, ar_workdir)
  raise ValueError("no scorer: give a GPT-2 Large folder or an 'ar' config and workdir"
                   + (f" ({reasons[0]})" if reasons else ""))


def mauve_score(p_features, q_features, **kwargs) -> float:
  """MAUVE between two feature sets [N, D] and [M, D] (mauve-text; Pillutla et al.; remdm.md §3.1).

  The library defaults are ReMDM's: num_buckets='auto' (min(N, M) / 10 k-means clusters), PCA keeping 90% of the
  variance, kmeans_num_redo=5, kmeans_max_iter=500, seed=25, mauve_scaling_factor c=5. `kwargs` override them.
  """
  try:
    import mauve  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"MAUVE needs `pip install mauve-text` (or md4_jax[eval]) ({e})") from e
  p, q = np.asarray(p_features, np.float32), np.asarray(q_features, np.float32)
  if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
    raise ValueError(f"features must be [N, D] and [M, D] with the same D; got {p.shape} and {q.shape}")
  return float(mauve.compute_mauve(p_features=p, q_features=q, **kwargs).mauve)


def text_quality(samples, scorer: Scorer | None = None, reference_features=None, eos_id: int | None = None,
                 **mauve_kwargs) -> dict[str, float | None]:
  """ReMDM's three numbers for samples [B, L] (remdm.md §3.1): the mean entropy (nats); with a scorer, the
  generative perplexity (eos_id: ReMDM's EOS mask) and, given the scorer's features of the references [M, D],
  MAUVE (mauve_kwargs go to mauve_score). None where a number is not measured."""
  samples = _tokens_2d(samples)
  result = {"entropy": float(entropy(samples).mean()), "gen_ppl": None, "mauve": None}
  if scorer is not None:
    result["gen_ppl"] = gen_ppl(scorer.score, samples, eos_id)
    if reference_features is not None:
      result["mauve"] = mauve_score(reference_features, scorer.features(samples), **mauve_kwargs)
  return result
