"""NELBO of a split in bits per token and perplexity (the library behind `md4_jax.evaluate` and the training loop's
evaluation).

Units as MD4 reports them (md4.md §2.8): bits per token = nats / (L ln 2), perplexity = exp(nats per token), an
upper bound for MD4 / GenMD4 (an ELBO) and exact for 'ar' models. Each example gets K independent (t, mask) draws,
averaged before the mean over the split. The split is read in config.train.eval_batch_size batches, the first
config.train.eval_batches of them (-1 = all). Zero-shot: the five sets of the SEDD protocol (md4.md §5.3).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Iterator

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from md4_jax import data as data_lib
from md4_jax import diffusion
from md4_jax.training import experiment as experiment_lib
from md4_jax import objectives
from md4_jax.training import sharding
from md4_jax.data import gpt2_tokenizer

ZERO_SHOT_SETS = ("lambada", "wikitext2", "ptb", "wikitext103", "lm1b")
ZERO_SHOT_SUFFIXES = (".jsonl", ".jsonl.gz", ".txt", ".txt.gz")  # <zero_shot_dir>/<name><suffix>, first found


def eval_step(params, batch: dict, key: jax.Array, *, graphdef) -> jax.Array:
  """Per-example NELBO in nats [B] under `params`, dropout off (the model's own objective)."""
  model = nnx.merge(graphdef, params)
  return model.loss(batch["x"], key, batch.get("label")).nelbo


def make_eval_fn(exp: experiment_lib.Experiment, step=eval_step, **kwargs):
  """jit of step(params, batch, key, graphdef=..., **kwargs) with the batch split over the experiment's mesh."""
  return jax.jit(functools.partial(step, graphdef=exp.graphdef, **kwargs),
                 in_shardings=(exp.state_sharding.params, sharding.batch_sharding(exp.mesh), None),
                 out_shardings=sharding.batch_sharding(exp.mesh))


def check_estimator(objective: str, discrete_steps: int, num_mc_samples: int) -> None:
  """Raises ValueError for a NELBO estimator the objective does not have."""
  if num_mc_samples < 1:
    raise ValueError(f"num_mc_samples must be >= 1; got {num_mc_samples}")
  if discrete_steps < 0:
    raise ValueError(f"discrete_steps must be 0 (continuous time) or a number of steps T >= 1; got {discrete_steps}")
  if discrete_steps and not objectives.get(objective).discrete_time:
    valid = [o.name for o in objectives.REGISTRY.values() if o.discrete_time]
    raise ValueError(f"discrete_steps={discrete_steps} (L_T) applies to diffusion.objective="
                     f"{' / '.join(repr(name) for name in valid)} only; this model "
                     f"is {objective!r} (use discrete_steps=0)")


def nelbo(model, x: jax.Array, key: jax.Array, cond: jax.Array | None, discrete_steps: int) -> jax.Array:
  """One draw of the per-example NELBO in nats [B].

  MD4: continuous time (md4.md §2.3) if discrete_steps == 0, else L_T with T = discrete_steps (§2.4), whatever
  config.diffusion.cont_time says. GenMD4: its continuous-time NELBO; 'ar': the exact NLL.
  """
  c = model.diffusion_config
  if not objectives.get(c.objective).discrete_time:
    return model.loss(x, key, cond).nelbo
  denoise_fn = model.denoiser(cond)
  if discrete_steps:
    return diffusion.discrete_nelbo(denoise_fn, key, x, c.masking_schedule, discrete_steps)
  return diffusion.continuous_nelbo(denoise_fn, key, x, c.masking_schedule, c.antithetic)


def mc_eval_step(params, batch: dict, key: jax.Array, *, graphdef, num_mc_samples: int,
                 discrete_steps: int) -> jax.Array:
  """K = num_mc_samples independent NELBO draws per example, nats [B, K] (one denoiser pass at a time)."""
  model = nnx.merge(graphdef, params)
  draw = lambda k: nelbo(model, batch["x"], k, batch.get("label"), discrete_steps)
  return jax.lax.map(draw, jax.random.split(key, num_mc_samples)).T  # [B, K]


def make_mc_eval_fn(exp: experiment_lib.Experiment, num_mc_samples: int = 1, discrete_steps: int = 0):
  check_estimator(exp.config.diffusion.objective, discrete_steps, num_mc_samples)
  return make_eval_fn(exp, mc_eval_step, num_mc_samples=num_mc_samples, discrete_steps=discrete_steps)


def local_batches(config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict, split: str,
                   whole_split: bool) -> Iterator[tuple[dict, int]]:
  """(this process's part of a global batch, the number of real examples in the global batch).

  whole_split: every example; each process reads the whole split (meant for small sets) and takes its rows of
  each global batch, the last one padded with copies of its last example, so the batches and their Monte Carlo
  draws do not depend on the process count. Else the first train.eval_batches full global batches (-1: all).
  """
  size, count, index = config.train.eval_batch_size, jax.process_count(), jax.process_index()
  local = size // count
  if not whole_split:
    dataset = data_lib.make_dataset(data_config, split, batch_size=local, seed=config.seed, shard_index=index,
                                    shard_count=count)
    for batch_index, batch in enumerate(dataset):
      if batch_index == config.train.eval_batches:
        return
      yield batch, size
    return
  rows = list(data_lib.make_dataset(data_config, split, batch_size=1, seed=config.seed))
  for start in range(0, len(rows), size):
    chunk = rows[start:start + size]
    mine = (chunk + chunk[-1:] * (size - len(chunk)))[index * local:(index + 1) * local]
    yield {k: np.concatenate([row[k] for row in mine]) for k in mine[0]}, len(chunk)


def per_example_nats(exp: experiment_lib.Experiment, eval_fn, params, split: str = "validation",
                     data_config: ml_collections.ConfigDict | None = None, whole_split: bool = False) -> np.ndarray:
  """eval_fn's values over `split` of data_config (default: the experiment's), float64 [N] or [N, K].

  The masks and times come from config.seed, the same at every call: evaluations of one run compare
  like with like; another seed gives another Monte Carlo estimate.
  """
  config = exp.config
  data_config = config.data if data_config is None else data_config
  key = jax.random.key(config.seed + 1)
  values = []
  for index, (local, num_real) in enumerate(local_batches(config, data_config, split, whole_split)):
    out = eval_fn(params, exp.global_batch(local), jax.random.fold_in(key, index))
    values.append(np.asarray(multihost_utils.process_allgather(out, tiled=True), np.float64)[:num_real])
  if not values:
    raise ValueError(f"no evaluation batch in split {split!r} of {data_config.name!r}: "
                     f"train.eval_batches={config.train.eval_batches}, "
                     f"train.eval_batch_size={config.train.eval_batch_size}")
  return np.concatenate(values)


def evaluate(exp: experiment_lib.Experiment, eval_fn, params, split: str = "validation") -> dict[str, float]:
  """NELBO in bits per token over `split` (or its first train.eval_batches batches) and its standard error over
  the examples (nan for one example); the training loop's eval."""
  stats = NelboStats(per_example_nats(exp, eval_fn, params, split)[:, None], exp.tokens_per_example)
  return {"eval/bits_per_token": stats.bits_per_token, "eval/bits_per_token_stderr": stats.stderr,
          "eval/examples": float(stats.nats.shape[0])}


@dataclasses.dataclass(frozen=True)
class NelboStats:
  """Per-example NELBO draws and what they give, in MD4's units."""
  nats: np.ndarray  # [N, K] float64: K draws for each of N examples
  num_tokens: int   # L (tokens, characters or dimensions per example)

  @property
  def bits_per_token(self) -> float:
    return float(self.nats.mean() / (self.num_tokens * math.log(2.0)))

  @property
  def stderr(self) -> float:
    """Standard error (bits/token) of the mean over examples of the per-example K-draw means (nan if N = 1)."""
    n = self.nats.shape[0]
    std = self.nats.mean(axis=1).std(ddof=1) if n > 1 else float("nan")
    return float(std / math.sqrt(n) / (self.num_tokens * math.log(2.0)))

  @property
  def mc_stderr(self) -> float:
    """Monte Carlo standard error (bits/token) of the estimate for these examples: sqrt(sum_i s_i^2 / K) / N,
    s_i^2 the variance of example i's K draws (nan if K = 1; examples treated as independent, though
    antithetic times correlate the draws within a batch). Falls as 1 / sqrt(K)."""
    n, k = self.nats.shape
    if k < 2:
      return float("nan")
    return float(math.sqrt(self.nats.var(axis=1, ddof=1).sum() / k) / n / (self.num_tokens * math.log(2.0)))

  @property
  def perplexity(self) -> float:
    return math.exp(self.nats.mean() / self.num_tokens)

  def summary(self) -> dict[str, float | int | None]:
    """The numbers as a JSON-ready dict (None for a standard error that cannot be estimated)."""
    finite = lambda x: x if math.isfinite(x) else None
    return {"bits_per_token": self.bits_per_token, "bits_per_token_stderr": finite(self.stderr),
            "bits_per_token_mc_stderr": finite(self.mc_stderr), "nats_per_token": self.nats.mean() / self.num_tokens,
            "perplexity": self.perplexity, "examples": int(self.nats.shape[0]), "tokens_per_example": self.num_tokens}


def nelbo_stats(exp: experiment_lib.Experiment, params, split: str = "validation", num_mc_samples: int = 1,
                discrete_steps: int = 0, data_config: ml_collections.ConfigDict | None = None,
                whole_split: bool = False) -> NelboStats:
  """K-draw NELBO statistics of `split` of data_config (default: the experiment's); 'ar' draws are all equal."""
  eval_fn = make_mc_eval_fn(exp, num_mc_samples, discrete_steps)
  nats = per_example_nats(exp, eval_fn, params, split, data_config, whole_split)
  tokens = (exp.tokens_per_example if data_config is None
            else math.prod(data_lib.dataset_info(data_config).data_shape))
  return NelboStats(nats, tokens)


def evaluate_checkpoint(config, workdir: str, step: int | None = None, split: str = "validation") -> dict:
  """Restores checkpoint `step` (default: the latest) of `workdir` and evaluates its EMA parameters."""
  restored = experiment_lib.restore_ema(config, workdir, step)
  return evaluate(restored.exp, make_eval_fn(restored.exp), restored.params, split)


def zero_shot(exp: experiment_lib.Experiment, params, directory: str, num_mc_samples: int = 1,
              discrete_steps: int = 0) -> dict[str, dict]:
  """Per set of ZERO_SHOT_SETS: NelboStats.summary() on its whole test split, or {'missing': path} without a file.

  The blocks have the model's sequence length; the model must be GPT-2 tokenised (V = 50257).
  """
  vocab_size = exp.info.vocab_size
  if vocab_size != gpt2_tokenizer.VOCAB_SIZE:
    raise ValueError(f"zero-shot sets are GPT-2 tokenised (V = {gpt2_tokenizer.VOCAB_SIZE}); this model has "
                     f"V = {vocab_size} (data {exp.config.data.name!r})")
  results = {}
  for name in ZERO_SHOT_SETS:
    paths = [os.path.join(directory, name + suffix) for suffix in ZERO_SHOT_SUFFIXES]
    path = next(filter(os.path.isfile, paths), None)  # the first that exists
    if path is None:
      results[name] = {"missing": paths[0]}
      continue
    data_config = data_lib.default_data_config(name)
    data_config.update(path=path, seq_len=int(exp.info.data_shape[0]))
    results[name] = nelbo_stats(exp, params, "test", num_mc_samples, discrete_steps, data_config,
                                whole_split=True).summary()
  return results
