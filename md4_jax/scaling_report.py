"""Inference-time scaling of one checkpoint: quality versus the number of sampler steps T, per sampler, in the
shape of ReMDM's Table 1 (remdm.md §3.2), with each run's denoiser calls and wall time.

    python -m md4_jax.scaling_report --workdir /tmp/md4_demo \\
        [--steps=16,32,64,128 --methods=ancestral,mdlm,cap,rescale,loop --num_samples=64 --batch_size=0 --seed=0 \\
         --output_dir=DIR --scorer_workdir=DIR2 --config.sampler.remdm.eta=0.04]

Methods: 'ancestral' (the experiment's own MD4 sampler config), 'mdlm' (ReMDM's settings with sigma = 0: the MDLM
posterior, Table 1's MDLM†), 'fb', 'dfm' (the corrector baselines) and the ReMDM strategies 'cap', 'rescale',
'conf', 'loop' (sampling.default_config('remdm') with that strategy). `--config.sampler.*` overrides apply to all
of them except num_steps (from --steps), name and strategy (from the method).

Quality (md4_jax.evaluation.quality, remdm.md §3.1): the mean per-sample token entropy (nats); with a scorer, Gen PPL
(token-weighted over all samples; ReMDM's EOS mask for GPT-2 data) and MAUVE against the 'data' row (num_samples
validation examples, in order). Scorers: an 'ar' checkpoint of this codebase (--scorer_workdir; --scorer_config
for a workdir without config.json; diffusion.objective='ar'; its numbers compare only with each other) or GPT-2
Large (--gpt2_large=FOLDER).
Time: each (method, T) is compiled by a warm-up batch first (warmup_s); wall_s is then the time of all
num_samples samples; nfe is the denoiser calls per batch.

Writes to --output_dir (default WORKDIR/scaling_report): report.md (Table-1 layout), report.csv (one row per
run), report.png (matplotlib, if installed) and samples/<method>_T<T>.{txt|png,jsonl}.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from md4_jax.training import atomic
from md4_jax import cli
from md4_jax import data as data_lib
from md4_jax.training import experiment
from md4_jax import generate
from md4_jax.evaluation import quality
from md4_jax.evaluation import tables
from md4_jax.training import run_config
from md4_jax import sample_lib
from md4_jax import sampling
from md4_jax.training import sharding as sharding_lib
from md4_jax.data import gpt2_tokenizer

REMDM_STRATEGIES = ("cap", "rescale", "conf", "loop")
METHODS = ("ancestral", "mdlm", "fb", "dfm") + REMDM_STRATEGIES
COLUMNS = ("method", "num_steps", "nfe", "wall_s", "warmup_s", "entropy", "gen_ppl", "mauve")


def method_config(method: str, num_steps: int, ancestral_base: ml_collections.ConfigDict,
                  remdm_base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The sampler config of `method` (module docstring) at T = num_steps."""
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
  config = (ancestral_base if method == "ancestral" else remdm_base).copy_and_resolve_references()
  with config.unlocked():
    config.num_steps = num_steps
    if method == "mdlm":
      config.name = "ancestral"
    elif method in ("fb", "dfm"):
      config.name = method
    elif method in REMDM_STRATEGIES:
      config.name, config.remdm.strategy = "remdm", method
  return config


def run_report(restored: experiment.Restored, bases: dict[str, ml_collections.ConfigDict], methods: list[str],
               steps: list[int], *, num_samples: int, batch_size: int, seed: int, output_dir: str,
               scorer: quality.Scorer | None = None, reference: np.ndarray | None = None,
               mauve: bool = True) -> list[dict]:
  """Samples num_samples per (method, T) and measures them (module docstring); returns one dict per run
  (COLUMNS), the 'data' row first when `reference` tokens are given. bases: 'ancestral' and 'remdm' sampler
  configs, as from sample_lib.prepare. MAUVE needs a scorer (its features) and `reference`."""
  info = restored.exp.info
  z_init = sample_lib.z_init_from_prompts(None, info, num_samples)
  eos_id = gpt2_tokenizer.EOS_ID if info.vocab_size == gpt2_tokenizer.VOCAB_SIZE else None
  flat = lambda x: x.reshape(x.shape[0], -1)  # [N, *data_shape] -> [N, L]
  reference_features = None
  if mauve and scorer is not None and reference is not None:
    reference_features = scorer.features(flat(reference))
  rows = []
  if reference is not None:
    rows.append({"method": "data", "num_steps": None, "nfe": None, "wall_s": None, "warmup_s": None,
                 **quality.text_quality(flat(reference), scorer, None, eos_id)})
  for method in methods:
    for num_steps in steps:
      config = method_config(method, num_steps, bases["ancestral"], bases["remdm"])
      key, exp = generate.seed_key(seed), restored.exp
      draw = lambda z, **kw: generate.generate(exp.graphdef, restored.params, config, z, key, mesh=exp.mesh,
                                               batch_size=batch_size, **kw)  # pylint: disable=cell-var-from-loop
      start = time.time()
      draw(z_init[:batch_size])  # compile
      warmup_s = time.time() - start
      tokens, stats = draw(z_init, progress=f"{method} T={num_steps}")
      generate.write_samples(os.path.join(output_dir, "samples", f"{method}_T{num_steps}"), tokens, info)
      rows.append({"method": method, "num_steps": num_steps, "nfe": stats["nfe"], "wall_s": stats["wall_s"],
                   "warmup_s": warmup_s, **quality.text_quality(flat(tokens), scorer, reference_features, eos_id,
                                                         verbose=False)})
  return rows


def _fmt(value, digits: int = 3) -> str:
  if value is None:
    return "-"
  return f"{value:.0f}" if isinstance(value, float) and value.is_integer() else f"{value:.{digits}f}"


def markdown_table(rows: list[dict], title: str) -> str:
  """ReMDM Table 1's layout: one row per method, each metric's cell 'v(T1) / v(T2) / ...'."""
  steps = sorted({r["num_steps"] for r in rows if r["num_steps"] is not None})
  metrics = [(key, name) for key, name in (("mauve", "MAUVE"), ("gen_ppl", "Gen PPL"), ("entropy", "Entropy"),
                                            ("nfe", "NFE"), ("wall_s", "wall s"))
             if any(r[key] is not None for r in rows)]
  t_label = "T=" + " / ".join(str(t) for t in steps)
  table = []
  for method in dict.fromkeys(r["method"] for r in rows):
    by_t = {r["num_steps"]: r for r in rows if r["method"] == method}
    cells = [method]
    for key, _ in metrics:
      values = [by_t[t][key] for t in steps if t in by_t] if method != "data" else [by_t[None][key]]
      cells.append(" / ".join(_fmt(v) for v in values))
    table.append(cells)
  header = ["method"] + [f"{name} {t_label}" for _, name in metrics]
  return "\n".join([f"# {title}", ""] + tables.markdown_lines(header, table)) + "\n"


def plot(rows: list[dict], path: str, title: str) -> bool:
  """Quality versus T (log2 axis), one line per method, the data row dashed; False if matplotlib is missing."""
  plt = tables.pyplot()
  if plt is None:
    return False
  metrics = [(key, label) for key, label in (("mauve", "MAUVE"), ("gen_ppl", "Gen PPL"), ("entropy", "entropy (nats)"))
             if rows[-1][key] is not None]
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
  for ax, (key, label) in zip(axes[0], metrics):
    for method in dict.fromkeys(r["method"] for r in rows):
      points = [(r["num_steps"], r[key]) for r in rows if r["method"] == method]
      if method == "data":
        if points[0][1] is not None:
          ax.axhline(points[0][1], color="black", linestyle="--", label="data")
      else:
        ax.plot(*zip(*points), marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sampler steps T")
    ax.set_ylabel(label)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  atomic.write_figure(path, fig)
  return True


def reference_tokens(config: ml_collections.ConfigDict, num_samples: int, seed: int) -> np.ndarray:
  """The first num_samples validation examples (in order) [N, *data_shape]."""
  try:
    dataset = data_lib.make_dataset(config.data, "validation", batch_size=num_samples, seed=seed)
  except OSError as error:
    raise ValueError(f"the 'data' row reads the validation split: {error} (or pass --noreference)") from error
  batch = next(iter(dataset), None)
  if batch is None:
    raise ValueError(f"the validation split has fewer than num_samples={num_samples} examples for the 'data' row; "
                     "lower --num_samples or pass --noreference")
  return batch["x"]


def _int_list(text: str, name: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError as error:
    raise ValueError(f"--{name}={text!r} must be a comma-separated list of ints") from error
  if not values or min(values) < 1:
    raise ValueError(f"--{name}={text!r} must list ints >= 1")
  return values


def main(argv: list[str]) -> int:
  """`python -m md4_jax.scaling_report` (argv as sys.argv); returns the exit code."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  def define(fv):
    sample_lib.define_flags(fv)
    fv.remove_flag_values(["num_samples", "output", "prefix_file", "infill_file", "label"])
    flags.DEFINE_string("steps", "16,32,64,128", "sampler steps T, comma-separated", flag_values=fv)
    flags.DEFINE_list("methods", ["ancestral", "mdlm", "cap", "rescale", "loop"],
                      f"samplers, from {', '.join(METHODS)}", flag_values=fv)
    flags.DEFINE_integer("num_samples", 64, "samples per (method, T)", flag_values=fv)
    flags.DEFINE_string("output_dir", None, "default: WORKDIR/scaling_report", flag_values=fv)
    flags.DEFINE_bool("reference", True, "add a 'data' row (validation examples)", flag_values=fv)
    config_flags.DEFINE_config_file("scorer_config", None, "experiment config of an 'ar' Gen-PPL scorer",
                                    flag_values=fv, lock_config=True, sys_argv=list(argv))
    flags.DEFINE_string("scorer_workdir", None, "workdir of the scorer's checkpoints", flag_values=fv)
    flags.DEFINE_integer("scorer_step", None, "scorer checkpoint step (default: the latest)", flag_values=fv)
    flags.DEFINE_string("gpt2_large", None, "a local transformers GPT-2 Large folder: the paper's scorer (GPT-2 "
                        "tokenised data), instead of --scorer_config", flag_values=fv)
    flags.DEFINE_bool("mauve", True, "MAUVE against the 'data' row (needs a scorer and --reference)", flag_values=fv)

  loaded = []  # the config before the binary's sampler and the overrides: each method's base starts from it

  def prepare(config):
    loaded.append(config.copy_and_resolve_references())
    return sample_lib.prepare(config, "ancestral")

  return cli.run(argv, __doc__, define, lambda fv, config: _report(fv, config, loaded[0]), prepare=prepare)


def _report(fv, config: ml_collections.ConfigDict, loaded: ml_collections.ConfigDict) -> None:
  """The report the flags `fv` ask for; `loaded`: the config before the binary's sampler and the overrides."""
  steps = _int_list(fv.steps, "steps")
  methods = [m for m in fv.methods if m]
  for method in methods:
    if method not in METHODS:
      raise ValueError(f"unknown method {method!r} in --methods; valid: {', '.join(METHODS)}")
  if fv.scorer_config is not None and fv.scorer_workdir is None:
    raise ValueError("give both --scorer_config and --scorer_workdir, or neither")
  if fv.gpt2_large and fv.scorer_workdir is not None:
    raise ValueError("give one scorer: --gpt2_large or --scorer_config / --scorer_workdir")
  bases = {"ancestral": config.sampler}
  bases["remdm"] = sample_lib.prepare(loaded, "remdm").sampler
  bases["remdm"].update_from_flattened_dict(
      {k[len("sampler."):]: v for k, v in fv["config"].override_values.items() if k.startswith("sampler.")})
  for method in methods:
    for num_steps in steps:
      sampling.validate_config(method_config(method, num_steps, bases["ancestral"], bases["remdm"]))
  batch_size = generate.auto_batch_size(fv.batch_size, fv.num_samples, sharding_lib.make_mesh(config.mesh).size)
  restored = experiment.restore_ema(config, fv.workdir, fv.step)
  scorer = None
  if fv.gpt2_large:
    scorer = quality.gpt2_large_scorer(fv.gpt2_large, batch_size=batch_size)
  elif fv.scorer_workdir is not None:
    scorer_config = fv.scorer_config or run_config.load(fv.scorer_workdir)
    if scorer_config is None:
      raise ValueError(f"{run_config.path(fv.scorer_workdir)} not found; give the scorer's --scorer_config")
    scorer = quality.ar_scorer(scorer_config, fv.scorer_workdir, fv.scorer_step, batch_size)
  if scorer is not None and scorer.vocab_size != restored.exp.info.vocab_size:
    raise ValueError(f"the scorer {scorer.name} has V={scorer.vocab_size} tokens, the samples V="
                     f"{restored.exp.info.vocab_size}; score with a model of the same tokenizer")
  reference = reference_tokens(config, fv.num_samples, fv.seed) if fv.reference else None
  output_dir = fv.output_dir or os.path.join(fv.workdir, "scaling_report")
  os.makedirs(output_dir, exist_ok=True)
  rows = run_report(restored, bases, methods, steps, num_samples=fv.num_samples, batch_size=batch_size,
                    seed=fv.seed, output_dir=output_dir, scorer=scorer, reference=reference, mauve=fv.mauve)
  if jax.process_index() != 0:
    return
  title = (f"{os.path.basename(os.path.normpath(fv.workdir))} step {restored.step}: {fv.num_samples} samples per "
           f"run, {restored.exp.mesh.size} device(s) ({jax.devices()[0].platform})")
  atomic.write(os.path.join(output_dir, "report.md"), markdown_table(rows, title))
  atomic.write(os.path.join(output_dir, "report.csv"), tables.csv_text(rows, COLUMNS))
  png = plot(rows, os.path.join(output_dir, "report.png"), title)
  print(markdown_table(rows, title), flush=True)
  print(f"wrote {output_dir}/report.md, report.csv" + (", report.png" if png else
        " (no report.png: pip install matplotlib)"), flush=True)


run = cli.entry(main)  # console entry point (md4-scaling-report) and `python -m md4_jax.scaling_report`


if __name__ == "__main__":
  run()
