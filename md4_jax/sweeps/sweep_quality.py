"""Sample quality of sweep members' final checkpoints (`python -m md4_jax.sweep ... --sample_quality SPECS`).

SPECS: ';'-separated sampler settings, each a ','-separated list of config.sampler overrides (`num_steps=16,
grid=cosine`; '' = the experiment's own sampler). For each finished member and setting, N samples are drawn from
its final EMA parameters (class-conditional data: the N split evenly over the classes) and measured:

  entropy  the mean per-sample token entropy (nats; md4_jax.evaluation.quality)
  fid      images: the random-feature FID (md4_jax.evaluation.fid) against N examples of the training split
  gen_ppl  text, with --scorer_config / --scorer_workdir (an in-repo 'ar' checkpoint): generative perplexity

Each member is measured in its own process (`python -m md4_jax.sweeps.sweep_quality`, on the members' accelerator) and
the numbers are kept in ROOT/_sweep/<name>.quality.json, as columns `<metric>[<setting>]`; a member already
measured at the same checkpoint step with the same settings is not sampled again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from md4_jax import cli
from md4_jax.training import atomic
from md4_jax.sweeps import sweep_report
from md4_jax.sweeps import sweep_spec


def parse_specs(text: str) -> list[list[str]]:
  """'num_steps=16,grid=cosine;num_steps=64' -> [['num_steps=16', 'grid=cosine'], ['num_steps=64']]."""
  specs = [[p.strip() for p in spec.split(",") if p.strip()] for spec in text.split(";")]
  for spec in specs:
    for part in spec:
      if "=" not in part:
        raise ValueError(f"sampler setting {part!r} in --sample_quality={text!r} is not key=value")
  return specs


def measure(config_path: str, workdir: str, flag_args: list[str], specs: list[list[str]], num_samples: int,
            scorer=None) -> dict:
  """{'step': checkpoint step, 'metrics': {'<metric>[<setting>]': value}} of the latest checkpoint in `workdir`."""
  import jax  # pylint: disable=g-import-not-at-top
  from md4_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from md4_jax.training import experiment  # pylint: disable=g-import-not-at-top
  from md4_jax.evaluation import fid, quality  # pylint: disable=g-import-not-at-top
  from md4_jax import generate, sample_lib
  configs = [sweep_spec.resolve(config_path, flag_args + [f"--config.sampler.{p}" for p in spec] +
                                ["--config.mesh.data=-1", "--config.mesh.fsdp=1"]) for spec in specs]
  restored = experiment.restore_ema(configs[0], workdir)
  info = restored.exp.info
  classes = info.num_classes or 1
  per_class = [num_samples // classes + (c < num_samples % classes) for c in range(classes)]
  batch_size = generate.auto_batch_size(0, per_class[0], restored.exp.mesh.size)  # one shape for every class
  reference = None
  if len(info.data_shape) == 3:  # images: FID against the training split
    data = data_lib.make_dataset(configs[0].data, "train", batch_size=num_samples, seed=0)
    reference = info.decode(next(iter(data))["x"])
  metrics = {}
  for spec, config in zip(specs, configs):
    tokens = np.concatenate([
        generate.generate(restored.exp.graphdef, restored.params, config.sampler,
                          sample_lib.z_init_from_prompts(None, info, n), jax.random.fold_in(jax.random.key(0), c),
                          mesh=restored.exp.mesh, batch_size=batch_size, label=c if info.num_classes else None)[0]
        for c, n in enumerate(per_class) if n])
    flat = tokens.reshape(tokens.shape[0], -1)
    label = ",".join(spec) or "sampler"  # '' = the experiment's own sampler
    for name, value in quality.text_quality(flat, scorer).items():  # entropy; gen_ppl with a scorer
      if value is not None:
        metrics[f"{name}[{label}]"] = value
    if reference is not None:
      metrics[f"fid[{label}]"] = fid.fid(info.decode(tokens), reference)
  return {"step": restored.step, "metrics": metrics}


def run_all(config_path: str, root: str, members: list[sweep_spec.Member], common: list[str], specs_text: str,
            num_samples: int, num_steps: dict[str, int], scorer_args: list[str] = ()) -> None:
  """Measures every finished member not yet measured with these settings (module docstring), each in a process."""
  specs = parse_specs(specs_text)
  for m in members:
    workdir = os.path.join(root, m.name)
    step = sweep_report.steps_done(sweep_report.read_metrics(workdir))
    if step < num_steps[m.name]:
      continue
    path = sweep_report.status_path(root, m.name, "quality.json")
    key = {"specs": specs, "num_samples": num_samples, "step": step}
    try:
      with open(path, encoding="utf-8") as f:
        if all(json.load(f).get(k) == v for k, v in key.items()):
          continue
    except (FileNotFoundError, json.JSONDecodeError):
      pass
    print(f"[sweep quality] {m.name}: sampling {num_samples} x {len(specs)} setting(s)", flush=True)
    command = [sys.executable, "-m", "md4_jax.sweeps.sweep_quality", "--config", config_path, "--workdir", workdir,
               "--specs", specs_text, "--num_samples", str(num_samples), "--output", path, *scorer_args,
               *m.flag_args(common)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
      print(f"[sweep quality] {m.name}: failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}",
            file=sys.stderr, flush=True)


def define_flags(fv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("specs", None, "';'-separated sampler settings (module docstring)", flag_values=fv)
  flags.DEFINE_integer("num_samples", 256, "samples per setting", flag_values=fv)
  flags.DEFINE_string("output", None, "the member's quality.json", flag_values=fv)
  flags.DEFINE_string("scorer_config", None, "experiment file of an 'ar' Gen-PPL scorer", flag_values=fv)
  flags.DEFINE_string("scorer_workdir", None, "its training workdir", flag_values=fv)


def main(argv: list[str] | None = None) -> int:
  """`python -m md4_jax.sweeps.sweep_quality --config X --workdir MEMBER [--config.k=v ...] --specs S --output F`
  (argv as sys.argv; the sweep runs it per member); returns the exit code."""
  argv = sys.argv if argv is None else argv

  def body(args, config) -> int | None:
    del config  # each setting's config is resolved from the file and the member's overrides
    if args.specs is None or args.output is None:
      return cli.usage_error("give --specs and --output")
    specs = parse_specs(args.specs)
    scorer = None
    if args.scorer_config:
      from md4_jax.evaluation import quality  # pylint: disable=g-import-not-at-top
      scorer = quality.load_scorer(ar_config=sweep_spec.resolve(args.scorer_config, []),
                                   ar_workdir=args.scorer_workdir)
    flag_args = [a for a in argv[1:] if a.startswith("--config.")]
    result = measure(cli.flag_value(argv, "config")[0], args.workdir, flag_args, specs, args.num_samples, scorer)
    atomic.write(args.output, json.dumps({"specs": specs, "num_samples": args.num_samples, **result}, indent=1))

  return cli.run(argv, __doc__, define_flags, body, workdir_help="the member's workdir")


if __name__ == "__main__":
  cli.entry(main)()
