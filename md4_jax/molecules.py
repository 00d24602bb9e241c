"""Novelty versus property of generated QM9 molecules (ReMDM §5.2, remdm.md §3.4).

    python -m md4_jax.molecules --config experiments/qm9.py --workdirs /tmp/md4_qm9 \
        --samplers ancestral --samplers remdm:strategy=rescale,eta=0.9 --samplers remdm:strategy=conf,t_switch=0.5 \
        --guidance cfg,cbg --classifier /tmp/qm9_classifier --gammas 0,1,2 --steps 32,64 --seeds 0,1 \
        --num_samples 256 --out /tmp/qm9_eval

--config gives the data (the reference set, data.label); each model's config is its workdir's config.json (or
--config with WORKDIR:dotted.key=value options, for a workdir written before config.json existed).

For every (model, sampler, guidance, gamma, T, seed) it draws `num_samples` SMILES steered toward label 1
(property >= its 90th percentile) by D-CFG (gamma 0: unconditional, 1: conditional; label-conditioned models) or
D-CBG with a noisy classifier trained by `python -m md4_jax.train --config experiments/qm9_classifier.py` (masked
models; gamma 0: unguided). A model with neither runs once, gamma '-'. It counts with RDKit: valid (parsable,
non-empty), unique (distinct canonical SMILES among the valid), novel (unique and not in the training split), and the
mean property (`data.label`: ring count or QED) over the novel ones.
Writes results.csv, results.md (a markdown table) and frontier.png (novel count vs mean property).
"""
from __future__ import annotations

import dataclasses
import os
import sys

import ml_collections
import numpy as np

from md4_jax import cli
from md4_jax.training import atomic
from md4_jax.evaluation import tables
from md4_jax.training import config_base
from md4_jax.training import experiment as experiment_lib
from md4_jax import generate
from md4_jax import objectives
from md4_jax.training import run_config
from md4_jax import sample_lib
from md4_jax import sampling
from md4_jax.data import qm9
from md4_jax.data.interface import split_bounds

PROPERTIES = ('rings', 'qed')


@dataclasses.dataclass(frozen=True)
class Score:
  valid: int
  unique: int
  novel: int
  mean_property: float  # over the novel molecules; nan if none


def score(smiles: list[str], reference: set[str], prop: str) -> Score:
  """RDKit counts of `smiles` against the canonical SMILES `reference` (the training set)."""
  if prop not in PROPERTIES:
    raise ValueError(f'unknown property {prop!r}; valid: {", ".join(PROPERTIES)}')
  from rdkit import Chem, RDLogger  # pylint: disable=g-import-not-at-top
  from rdkit.Chem import QED, rdMolDescriptors  # pylint: disable=g-import-not-at-top
  RDLogger.DisableLog('rdApp.*')
  valid, canonical = 0, {}
  for s in smiles:
    mol = Chem.MolFromSmiles(s) if s else None
    if mol is None or mol.GetNumAtoms() == 0:
      continue
    valid += 1
    canonical.setdefault(Chem.MolToSmiles(mol), mol)
  novel = [mol for c, mol in canonical.items() if c not in reference]
  values = [rdMolDescriptors.CalcNumRings(m) if prop == 'rings' else QED.qed(m) for m in novel]
  return Score(valid, len(canonical), len(novel), float(np.mean(values)) if values else float('nan'))


def _set_options(config: ml_collections.ConfigDict, spec: str, kind: str, valid: str, path=lambda key: key) -> None:
  """Sets the 'key=value,...' options after the ':' of `spec` on `config`, at the dotted field path(key); a value
  takes the type of the field's value (a bool: true or false)."""
  for item in filter(None, spec.partition(':')[2].split(',')):
    key, sep, value = item.partition('=')
    *parents, leaf = path(key).split('.')
    parent = config
    for name in parents:
      parent = parent[name] if isinstance(parent, ml_collections.ConfigDict) and name in parent else None
    found = isinstance(parent, ml_collections.ConfigDict) and leaf in parent
    if not sep or not found or isinstance(parent[leaf], ml_collections.ConfigDict):  # a group is no field
      raise ValueError(f'bad {kind} option {item!r} in {spec!r}; give {valid}')
    field = parent[leaf]
    if isinstance(field, bool) and value.lower() not in ('true', 'false'):
      raise ValueError(f'bad {kind} option {item!r} in {spec!r}; a bool field takes true or false')
    parent[leaf] = value.lower() == 'true' if isinstance(field, bool) else type(field)(value)


def sampler_config(spec: str, experiment_sampler: ml_collections.ConfigDict, num_steps: int
                   ) -> ml_collections.ConfigDict:
  """'name' or 'name:key=value,...' (keys of the sampler config or of its remdm group) -> a sampler config."""
  config = sampling.default_config(spec.partition(':')[0])
  config.update(schedule=experiment_sampler.schedule, eps=experiment_sampler.eps, num_steps=num_steps)
  _set_options(config, spec, 'sampler', f'key=value with a key of: {", ".join(k for k in config if k != "remdm")}, '
               f'{", ".join(config.remdm)}', lambda key: f'remdm.{key}' if key in config.remdm else key)
  sampling.validate_config(config)
  return config


GUIDANCE = ('cfg', 'cbg')


def model_config(spec: str, base: ml_collections.ConfigDict) -> tuple[str, ml_collections.ConfigDict]:
  """'WORKDIR' or 'WORKDIR:key=value,...' -> (workdir, its config on one device): WORKDIR/config.json, else `base`
  with the dotted config fields the run was trained with (e.g. diffusion.objective=udlm)."""
  workdir = spec.partition(':')[0]
  config = run_config.load(workdir) or ml_collections.ConfigDict(base.to_dict())
  config.mesh.data, config.mesh.fsdp = 1, 1
  _set_options(config, spec, 'model', 'dotted.key=value of an existing config field')
  return workdir, config


FIELDS = ('model', 'sampler', 'guidance', 'gamma', 'steps', 'seed', 'samples', 'valid', 'unique', 'novel',
          'mean_property')


def write_outputs(rows: list[dict], out_dir: str, prop: str) -> None:
  """results.csv, results.md and frontier.png (novel count vs mean property, one line per model / sampler)."""
  os.makedirs(out_dir, exist_ok=True)
  atomic.write(os.path.join(out_dir, 'results.csv'), tables.csv_text(rows, FIELDS, lineterminator='\r\n'))
  cells = [[f'{r[k]:.3f}' if isinstance(r[k], float) else str(r[k]) for k in FIELDS] for r in rows]
  atomic.write(os.path.join(out_dir, 'results.md'), '\n'.join(tables.markdown_lines(FIELDS, cells)) + '\n')
  plt = tables.pyplot()
  if plt is None:
    raise ImportError('frontier.png needs matplotlib: pip install md4_jax[molecules]')
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for series in sorted({(r['model'], r['sampler'], r['guidance'], r['seed']) for r in rows}):
    points = [r for r in rows if (r['model'], r['sampler'], r['guidance'], r['seed']) == series and r['novel'] > 0]
    if points:
      ax.plot([r['novel'] for r in points], [r['mean_property'] for r in points], 'o-',
              label=' '.join(str(v) for v in series))
      for r in points:
        ax.annotate(f"g{r['gamma']} T{r['steps']}", (r['novel'], r['mean_property']), fontsize=6)
  ax.set_xlabel('novel molecules')
  ax.set_ylabel(f'mean {prop} over novel')
  ax.legend(fontsize=6)
  fig.tight_layout()
  atomic.write_figure(os.path.join(out_dir, 'frontier.png'), fig)


def _guides(exp, names: list[str], gammas: list[float], classifier) -> list[generate.Guide]:
  """The guides a model supports among `names`: D-CFG needs a label-conditioned model, D-CBG a masked model
  (its classifier reads MD4-masked inputs) and a classifier; a model with neither runs once unguided."""
  guides = []
  if 'cfg' in names and exp.info.num_classes:
    guides += [generate.Guide('cfg', g) for g in gammas]
  if 'cbg' in names and objectives.get(exp.config.diffusion.objective).sampler == objectives.MASKED:
    guides += [generate.Guide('cbg', g, classifier) for g in gammas]
  return guides or [generate.Guide('none')]


def load_classifier(config: ml_collections.ConfigDict, workdir: str, label: str) -> tuple:
  """(graphdef, EMA params) of the 'classifier' run in `workdir` (its config.json, else `config`), checked to
  predict `label`."""
  config = run_config.load(workdir) or ml_collections.ConfigDict(config.to_dict())
  config.mesh.data, config.mesh.fsdp = 1, 1
  if config.diffusion.objective != 'classifier':
    raise ValueError(f"the classifier config trains diffusion.objective={config.diffusion.objective!r}; D-CBG "
                     "needs a 'classifier' run (experiments/qm9_classifier.py)")
  if config.data.label != label:
    raise ValueError(f'the classifier predicts data.label={config.data.label!r} but the models target {label!r}')
  restored = experiment_lib.restore_ema(config, workdir)
  return restored.exp.graphdef, restored.params


def define_flags(fv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_multi_string('workdirs', None, 'a training workdir, one model each (repeat the flag), as WORKDIR or '
                            'WORKDIR:dotted.key=value,... (fields of a run without config.json)', flag_values=fv)
  flags.DEFINE_multi_string('samplers', ['ancestral'], 'a sampler spec (repeat the flag): name or '
                            'name:key=value,...', flag_values=fv)
  flags.DEFINE_list('guidance', ['cfg'], f'of: {", ".join(GUIDANCE)}', flag_values=fv)
  flags.DEFINE_string('classifier', None, "workdir of a 'classifier' run (needed by --guidance cbg)", flag_values=fv)
  flags.DEFINE_string('classifier_config', None, "the classifier run's experiment file, for a workdir without "
                      'config.json (default: qm9_classifier.py next to --config)', flag_values=fv)
  flags.DEFINE_enum('label', None, PROPERTIES, "the property the runs were trained for (default: the config's "
                    "data.label); sets data.label of the models' and the classifier's configs", flag_values=fv)
  flags.DEFINE_list('gammas', ['1'], 'guidance strengths', flag_values=fv)
  flags.DEFINE_list('steps', ['32'], 'sampler steps T', flag_values=fv)
  flags.DEFINE_list('seeds', ['0'], 'sampling seeds', flag_values=fv)
  flags.DEFINE_integer('num_samples', 256, 'samples per row', flag_values=fv)
  flags.DEFINE_integer('batch_size', 256, 'samples per sampler call', flag_values=fv)
  flags.DEFINE_string('out', None, 'output folder', flag_values=fv)


def main(argv: list[str]) -> int:
  """`python -m md4_jax.molecules` (argv as sys.argv): bad input (a missing checkpoint, a mismatched classifier, a
  bad sampler or model option) ends with one line and a non-zero exit status."""
  config_path = cli.flag_value(argv, 'config')[0]
  return cli.run(argv, __doc__, define_flags, lambda args, base: _evaluate(args, base, config_path), need_workdir=False)


def _evaluate(args, base: ml_collections.ConfigDict, config_path: str | None) -> int | None:
  """Every (model, sampler, guidance, gamma, T, seed) row of the module docstring, written as it is measured;
  2 for a usage error."""
  names = args.guidance
  for name in names:
    if name not in GUIDANCE:
      return cli.usage_error(f'unknown --guidance {name!r}; valid: {", ".join(GUIDANCE)}')
  if 'cbg' in names and not args.classifier:
    return cli.usage_error('--guidance cbg needs --classifier WORKDIR (a run of experiments/qm9_classifier.py)')
  if not args.workdirs or not args.out:
    return cli.usage_error('give --workdirs and --out')
  base = base.copy_and_resolve_references()
  if args.label:
    base.data.label = args.label
  prop = base.data.label if base.data.label != 'none' else 'rings'
  classifier = None
  if 'cbg' in names:
    classifier_config = config_base.load_experiment(
        args.classifier_config or os.path.join(os.path.dirname(config_path or '.'), 'qm9_classifier.py'))
    if args.label:
      classifier_config.data.label = args.label
    classifier = load_classifier(classifier_config, args.classifier, prop)
  molecules = qm9.load_molecules(base.data.path, base.data.cache_dir)
  train_stop = split_bounds(len(molecules['smiles']), base.data.train_fraction,
                            base.data.validation_fraction)['train'][1]
  reference = set(molecules['smiles'][:train_stop].tolist())
  gammas = [float(g) for g in args.gammas]
  rows = []
  for spec_workdir in args.workdirs:
    workdir, config = model_config(spec_workdir, base)
    restored = experiment_lib.restore_ema(config, workdir)
    exp = restored.exp
    objective = exp.config.diffusion.objective
    z_init = sample_lib.z_init_from_prompts(None, exp.info, args.num_samples)  # all masks
    for spec in args.samplers:
      if objectives.get(objective).sampler == objectives.UNIFORM and spec.partition(':')[0] != 'ancestral':
        continue  # ReMDM samplers are for masked models
      for steps in [int(s) for s in args.steps]:
        sampler = sampler_config(spec, config.sampler, steps)
        for guide in _guides(exp, names, gammas, classifier):
          for seed in [int(s) for s in args.seeds]:
            tokens, _ = generate.generate(exp.graphdef, restored.params, sampler, z_init,
                                          generate.seed_key(seed), mesh=exp.mesh, batch_size=args.batch_size,
                                          label=None if guide.kind == 'none' else 1, guide=guide)
            s = score(list(exp.info.decode(tokens)), reference, prop)
            rows.append(dict(model=os.path.basename(os.path.normpath(workdir)), sampler=f'{objective}:{spec}',
                             guidance=guide.kind, gamma='-' if guide.kind == 'none' else guide.gamma, steps=steps,
                             seed=seed, samples=args.num_samples, **dataclasses.asdict(s)))
            print(rows[-1], file=sys.stderr, flush=True)
            write_outputs(rows, args.out, prop)  # after every row: a crash keeps what was measured
  print(open(os.path.join(args.out, 'results.md')).read())


run = cli.entry(main)  # console entry point and `python -m md4_jax.molecules`


if __name__ == '__main__':
  run()
