"""Evaluation: the NELBO of a split in bits per token and perplexity, with the EMA parameters of a checkpoint.

    python -m md4_jax.evaluate --config experiments/owt_small.py --workdir DIR [--split validation]
        [--num_mc_samples K] [--discrete_steps T] [--step S] [--output FILE] [--config.key=value ...]
    python -m md4_jax.evaluate --config experiments/owt_small.py --workdir DIR --zero_shot --zero_shot_dir DIR

Units as MD4 reports them (md4.md §2.8): bits per token = nats / (L ln 2), perplexity = exp(nats per token), an
upper bound for MD4 / GenMD4 (an ELBO) and exact for 'ar' models. Each example gets K independent (t, mask) draws,
averaged before the mean over the split. The split is read in config.train.eval_batch_size batches, the first
config.train.eval_batches of them (-1 = all). Zero-shot: the five sets of the SEDD protocol (md4.md §5.3).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
from typing import Iterator

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from md4_jax import data as data_lib
from md4_jax import diffusion
from md4_jax import distributed
from md4_jax import experiment as experiment_lib
from md4_jax import sharding
from md4_jax.data import gpt2_tokenizer

ZERO_SHOT_SETS = ("lambada", "wikitext2", "ptb", "wikitext103", "lm1b")
ZERO_SHOT_SUFFIXES = (".jsonl", ".jsonl.gz", ".txt", ".txt.gz")  # <zero_shot_dir>/<name><suffix>, first found


def eval_step(params, batch: dict, key: jax.Array, *, graphdef) -> jax.Array:
  """Per-example NELBO in nats [B] under `params`, dropout off (the model's own objective)."""
  model = nnx.merge(graphdef, params)
  return model.loss(batch["x"], key, batch.get("label")).nelbo


def make_eval_fn(exp: experiment_lib.Experiment):
  return jax.jit(functools.partial(eval_step, graphdef=exp.graphdef),
                 in_shardings=(exp.params_sharding, sharding.batch_sharding(exp.mesh), None),
                 out_shardings=sharding.batch_sharding(exp.mesh))


def check_estimator(objective: str, discrete_steps: int, num_mc_samples: int) -> None:
  """Raises ValueError for a NELBO estimator the objective does not have."""
  if num_mc_samples < 1:
    raise ValueError(f"num_mc_samples must be >= 1; got {num_mc_samples}")
  if discrete_steps < 0:
    raise ValueError(f"discrete_steps must be 0 (continuous time) or a number of steps T >= 1; got {discrete_steps}")
  if discrete_steps and objective != "md4":
    raise ValueError(f"discrete_steps={discrete_steps} (L_T) applies to diffusion.objective='md4' only; this model "
                     f"is {objective!r} (use discrete_steps=0)")


def nelbo(model, x: jax.Array, key: jax.Array, cond: jax.Array | None, discrete_steps: int) -> jax.Array:
  """One draw of the per-example NELBO in nats [B].

  MD4: continuous time (md4.md §2.3) if discrete_steps == 0, else L_T with T = discrete_steps (§2.4), whatever
  config.diffusion.cont_time says. GenMD4: its continuous-time NELBO; 'ar': the exact NLL.
  """
  c = model.diffusion_config
  if c.objective != "md4":
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
  step = functools.partial(mc_eval_step, graphdef=exp.graphdef, num_mc_samples=num_mc_samples,
                           discrete_steps=discrete_steps)
  return jax.jit(step, in_shardings=(exp.params_sharding, sharding.batch_sharding(exp.mesh), None),
                 out_shardings=sharding.batch_sharding(exp.mesh))


def _local_batches(config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict, split: str,
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
  for index, (local, num_real) in enumerate(_local_batches(config, data_config, split, whole_split)):
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


def zero_shot_path(directory: str, name: str) -> str | None:
  """The first existing <directory>/<name><suffix> of ZERO_SHOT_SUFFIXES, or None."""
  for suffix in ZERO_SHOT_SUFFIXES:
    path = os.path.join(directory, name + suffix)
    if os.path.isfile(path):
      return path
  return None


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
    path = zero_shot_path(directory, name)
    if path is None:
      results[name] = {"missing": os.path.join(directory, name + ZERO_SHOT_SUFFIXES[0])}
      continue
    data_config = data_lib.default_data_config(name)
    data_config.update(path=path, seq_len=int(exp.info.data_shape[0]))
    results[name] = nelbo_stats(exp, params, "test", num_mc_samples, discrete_steps, data_config,
                                whole_split=True).summary()
  return results


def markdown(result: dict) -> str:
  """The result of `run` as a markdown table."""
  bound = "≤ " if result["objective"] != "ar" else ""
  rows = ["| set | examples | bits/token | s.e. | MC s.e. | perplexity |", "|---|---|---|---|---|---|"]
  sets = result["zero_shot"] if "zero_shot" in result else {result["split"]: result}
  number = lambda x: "-" if x is None else f"{x:.4f}"
  for name, s in sets.items():
    if "missing" in s:
      rows.append(f"| {name} | | | | | missing: {s['missing']} |")
    else:
      rows.append(f"| {name} | {s['examples']} | {s['bits_per_token']:.4f} | {number(s['bits_per_token_stderr'])} | "
                  f"{number(s['bits_per_token_mc_stderr'])} | {bound}{s['perplexity']:.2f} |")
  return "\n".join(rows)


def run(config: ml_collections.ConfigDict, workdir: str, *, split: str = "validation", num_mc_samples: int = 1,
        discrete_steps: int = 0, step: int | None = None, zero_shot_dir: str | None = None) -> dict:
  """What the CLI prints: the split's NELBO statistics, or the zero-shot table when zero_shot_dir is given."""
  check_estimator(config.diffusion.objective, discrete_steps, num_mc_samples)
  if config.diffusion.objective == "ar":
    num_mc_samples = 1  # the exact NLL: every draw is the same
  restored = experiment_lib.restore_ema(config, workdir, step)
  exp, params, step = restored.exp, restored.params, restored.step
  head = {"workdir": workdir, "step": int(step), "objective": config.diffusion.objective,
          "num_mc_samples": num_mc_samples, "discrete_steps": discrete_steps}
  if zero_shot_dir is not None:
    return {**head, "zero_shot": zero_shot(exp, params, zero_shot_dir, num_mc_samples, discrete_steps)}
  return {**head, "split": split, **nelbo_stats(exp, params, split, num_mc_samples, discrete_steps).summary()}


def write_atomic(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  temp = f"{path}.tmp{os.getpid()}"
  with open(temp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(temp, path)


def main(argv) -> None:
  del argv
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # Orbax warns about every read-only checkpoint manager
  f = flags.FLAGS
  distributed.initialize(f.multihost)
  try:
    if f.zero_shot and not f.zero_shot_dir:
      raise ValueError("--zero_shot needs --zero_shot_dir (a folder with <set>.jsonl / .txt files for the sets "
                       f"{', '.join(ZERO_SHOT_SETS)})")
    result = run(f.config, f.workdir, split=f.split, num_mc_samples=f.num_mc_samples,
                 discrete_steps=f.discrete_steps, step=f.step, zero_shot_dir=f.zero_shot_dir if f.zero_shot else None)
  except (ValueError, OSError) as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(1)
  text = json.dumps(result, allow_nan=False) + "\n\n" + markdown(result) + "\n"
  if jax.process_index() == 0:
    print(text, end="", flush=True)
    if f.output:
      write_atomic(f.output, text)


def cli() -> None:
  """Console entry point (md4-evaluate) and `python -m md4_jax.evaluate`."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "experiment config file (experiments/*.py)", lock_config=True)
  flags.DEFINE_string("workdir", None, "the training run's directory (its checkpoints/)")
  flags.DEFINE_string("split", "validation", f"split to evaluate: {', '.join(data_lib.SPLITS)}")
  flags.DEFINE_integer("num_mc_samples", 1, "K independent (t, mask) draws per example")
  flags.DEFINE_integer("discrete_steps", 0, "0: continuous-time NELBO; T >= 1: the discrete-time L_T (MD4 only)")
  flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
  flags.DEFINE_bool("zero_shot", False, f"evaluate the zero-shot sets {', '.join(ZERO_SHOT_SETS)} instead")
  flags.DEFINE_string("zero_shot_dir", None, f"folder of <set><suffix> files, suffixes {', '.join(ZERO_SHOT_SUFFIXES)}")
  flags.DEFINE_string("output", None, "also write the JSON line and table to this file")
  flags.DEFINE_bool("multihost", False, "join a multi-process run detected by jax.distributed (as md4_jax.train)")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)


if __name__ == "__main__":
  cli()
