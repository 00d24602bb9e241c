"""Evaluation: the NELBO of a split in bits per token and perplexity, with the EMA parameters of a checkpoint.

    python -m md4_jax.evaluate --workdir DIR [--split validation] [--num_mc_samples K] [--discrete_steps T]
        [--step S] [--output FILE] [--config experiments/owt_small.py] [--config.key=value ...]
    python -m md4_jax.evaluate --workdir DIR --zero_shot --zero_shot_dir DIR

The command line of md4_jax.evaluation.nelbo (the library the training loop also uses; its docstring gives the
units, the K Monte Carlo draws, the batches read and the zero-shot sets); the run's config comes from
WORKDIR/config.json, or --config for a workdir written before it existed.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from md4_jax.training import atomic
from md4_jax import cli as cli_lib
from md4_jax import data as data_lib
from md4_jax.training import experiment as experiment_lib
from md4_jax import objectives
from md4_jax.evaluation.nelbo import (ZERO_SHOT_SETS, ZERO_SHOT_SUFFIXES, check_estimator, nelbo_stats,
                                zero_shot)


def markdown(result: dict) -> str:
  """The result of `run` as a markdown table."""
  bound = "" if objectives.get(result["objective"]).exact_likelihood else "≤ "
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
  if objectives.get(config.diffusion.objective).exact_likelihood:
    num_mc_samples = 1  # the exact NLL: every draw is the same
  restored = experiment_lib.restore_ema(config, workdir, step)
  exp, params, step = restored.exp, restored.params, restored.step
  head = {"workdir": workdir, "step": int(step), "objective": config.diffusion.objective,
          "num_mc_samples": num_mc_samples, "discrete_steps": discrete_steps}
  if zero_shot_dir is not None:
    return {**head, "zero_shot": zero_shot(exp, params, zero_shot_dir, num_mc_samples, discrete_steps)}
  return {**head, "split": split, **nelbo_stats(exp, params, split, num_mc_samples, discrete_steps).summary()}


def define_flags(fv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("split", "validation", f"split to evaluate: {', '.join(data_lib.SPLITS)}", flag_values=fv)
  flags.DEFINE_integer("num_mc_samples", 1, "K independent (t, mask) draws per example", flag_values=fv)
  flags.DEFINE_integer("discrete_steps", 0, "0: continuous-time NELBO; T >= 1: the discrete-time L_T (MD4 only)",
                       flag_values=fv)
  flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)", flag_values=fv)
  flags.DEFINE_bool("zero_shot", False, f"evaluate the zero-shot sets {', '.join(ZERO_SHOT_SETS)} instead",
                    flag_values=fv)
  flags.DEFINE_string("zero_shot_dir", None, f"folder of <set><suffix> files, suffixes {', '.join(ZERO_SHOT_SUFFIXES)}",
                      flag_values=fv)
  flags.DEFINE_string("output", None, "also write the JSON line and table to this file", flag_values=fv)
  flags.DEFINE_bool("multihost", False, "join a multi-process run detected by jax.distributed (as md4_jax.train)",
                    flag_values=fv)


def main(argv: list[str]) -> int:
  """`python -m md4_jax.evaluate` (argv as sys.argv); returns the exit code."""
  return cli_lib.run(argv, __doc__, define_flags, _evaluate)


def _evaluate(f, config: ml_collections.ConfigDict) -> None:
  if f.zero_shot and not f.zero_shot_dir:
    raise ValueError("--zero_shot needs --zero_shot_dir (a folder with <set>.jsonl / .txt files for the sets "
                     f"{', '.join(ZERO_SHOT_SETS)})")
  result = run(config, f.workdir, split=f.split, num_mc_samples=f.num_mc_samples, discrete_steps=f.discrete_steps,
               step=f.step, zero_shot_dir=f.zero_shot_dir if f.zero_shot else None)
  text = json.dumps(result, allow_nan=False) + "\n\n" + markdown(result) + "\n"
  if jax.process_index() == 0:
    print(text, end="", flush=True)
    if f.output:
      os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
      atomic.write(f.output, text)


cli = cli_lib.entry(main)  # console entry point (md4-evaluate) and `python -m md4_jax.evaluate`


if __name__ == "__main__":
  cli()
