"""Novelty versus property of generated QM9 molecules (ReMDM §5.2, remdm.md §3.4).

    python -m md4_jax.molecules --config experiments/qm9.py --workdirs /tmp/md4_qm9 \
        --samplers ancestral "remdm:strategy=rescale,eta=0.9" "remdm:strategy=conf,t_switch=0.5" \
        --guidance cfg,cbg --classifier /tmp/qm9_classifier --gammas 0,1,2 --steps 32,64 --seeds 0,1 \
        --num_samples 256 --out /tmp/qm9_eval

For every (model, sampler, guidance, gamma, T, seed) it draws `num_samples` SMILES steered toward label 1
(property >= its 90th percentile) by D-CFG (gamma 0: unconditional, 1: conditional; label-conditioned models) or
D-CBG with a noisy classifier trained by `python -m md4_jax.train --config experiments/qm9_classifier.py` (masked
models; gamma 0: unguided). A model with neither runs once, gamma '-'. It counts with RDKit: valid (parsable, non-empty), unique (distinct canonical SMILES among the valid), novel (unique
and not in the training split), and the mean property (`data.label`: ring count or QED) over the novel ones.
Writes results.csv, results.md (a markdown table) and frontier.png (novel count vs mean property).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from md4_jax import config_base
from md4_jax import experiment as experiment_lib
from md4_jax import guidance
from md4_jax import sample_writer
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


def sampler_config(spec: str, experiment_sampler: ml_collections.ConfigDict, num_steps: int
                   ) -> ml_collections.ConfigDict:
  """'name' or 'name:key=value,...' (keys of the sampler config or of its remdm group) -> a sampler config."""
  name, _, rest = spec.partition(':')
  config = sampling.default_config(name)
  config.update(schedule=experiment_sampler.schedule, eps=experiment_sampler.eps, num_steps=num_steps)
  for item in filter(None, rest.split(',')):
    key, sep, value = item.partition('=')
    group = config if key in config and key != 'remdm' else config.remdm if key in config.remdm else None
    if not sep or group is None:
      raise ValueError(f'bad sampler option {item!r} in {spec!r}; give key=value with a key of: '
                       f'{", ".join(k for k in config if k != "remdm")}, {", ".join(config.remdm)}')
    group[key] = type(group[key])(value)
  sampling.validate_config(config)
  return config


GUIDANCE = ('cfg', 'cbg')


@dataclasses.dataclass(frozen=True)
class Guide:
  """How samples are steered toward label 1: kind 'none' (unguided), 'cfg' (D-CFG of a label-conditioned model)
  or 'cbg' (D-CBG with a noisy classifier, `classifier` = its (graphdef, params)), with strength gamma."""
  kind: str
  gamma: float = 0.0
  classifier: tuple | None = None

  def denoiser(self, graphdef, params, batch_size: int) -> tuple[jax.tree_util.Partial, jax.tree_util.Partial | None]:
    """(denoise_fn, guide) for `sampling.sample(denoise_fn, ..., guide=guide)`."""
    uncond = sample_writer.denoiser(graphdef, params)
    if self.kind == 'none':
      return uncond, None
    if self.kind == 'cbg':  # the classifier runs only where tokens are drawn (guidance.cbg_guide)
      return uncond, guidance.cbg_guide(sample_writer.classifier(*self.classifier), 1, self.gamma)
    cond = sample_writer.denoiser(graphdef, params, jnp.ones((batch_size,), jnp.int32))
    # gamma = 1 is the conditional model itself: one network call per step instead of two
    return (cond if self.gamma == 1 else guidance.cfg_denoiser(cond, uncond, self.gamma)), None


def generate(graphdef, params, vocab_size: int, length: int, config: ml_collections.ConfigDict,
             guide: Guide, num_samples: int, batch_size: int, key: jax.Array, *,
             objective: str = 'md4') -> np.ndarray:
  """Token ids int32 [num_samples, L] from the model `graphdef, params` (trained with `objective`) under `guide`."""
  out = []
  for index, first in enumerate(range(0, num_samples, batch_size)):
    size = min(batch_size, num_samples - first)
    denoise_fn, row_guide = guide.denoiser(graphdef, params, size)
    z_init = jnp.full((size, length), vocab_size, jnp.int32)
    tokens, _ = sample_writer.draw(objective, denoise_fn, jax.random.fold_in(key, index), z_init, config,
                                   guide=row_guide)
    out.append(np.asarray(tokens))
  return np.concatenate(out)


def model_config(spec: str, base: ml_collections.ConfigDict) -> tuple[str, ml_collections.ConfigDict]:
  """'WORKDIR' or 'WORKDIR:key=value,...' (dotted config fields the run was trained with, e.g.
  diffusion.objective=udlm) -> (workdir, the experiment config with them, on one device)."""
  workdir, _, rest = spec.partition(':')
  config = ml_collections.ConfigDict(base.to_dict())
  config.mesh.data, config.mesh.fsdp = 1, 1
  for item in filter(None, rest.split(',')):
    key, sep, value = item.partition('=')
    *parents, leaf = key.split('.')
    parent = config
    for name in parents:
      parent = parent[name] if isinstance(parent, ml_collections.ConfigDict) and name in parent else None
    if not sep or not isinstance(parent, ml_collections.ConfigDict) or leaf not in parent:
      raise ValueError(f'bad model option {item!r} in {spec!r}; give dotted.key=value of an existing config field')
    parent[leaf] = type(parent[leaf])(value)
  return workdir, config


FIELDS = ('model', 'sampler', 'guidance', 'gamma', 'steps', 'seed', 'samples', 'valid', 'unique', 'novel',
          'mean_property')


def write_outputs(rows: list[dict], out_dir: str, prop: str) -> None:
  """results.csv, results.md and frontier.png (novel count vs mean property, one line per model / sampler)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, FIELDS)
    writer.writeheader()
    writer.writerows(rows)
  lines = ['| ' + ' | '.join(FIELDS) + ' |', '|' + '---|' * len(FIELDS)]
  lines += ['| ' + ' | '.join(f'{r[k]:.3f}' if isinstance(r[k], float) else str(r[k]) for k in FIELDS) + ' |'
            for r in rows]
  with open(os.path.join(out_dir, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
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
  fig.savefig(os.path.join(out_dir, 'frontier.png'), dpi=120)
  plt.close(fig)


def _guides(exp, names: list[str], gammas: list[float], classifier) -> list[Guide]:
  """The guides a model supports among `names`: D-CFG needs a label-conditioned model, D-CBG a masked model
  (its classifier reads MD4-masked inputs) and a classifier; a model with neither runs once unguided."""
  guides = []
  if 'cfg' in names and exp.info.num_classes:
    guides += [Guide('cfg', g) for g in gammas]
  if 'cbg' in names and exp.config.diffusion.objective in ('md4', 'genmd4'):
    guides += [Guide('cbg', g, classifier) for g in gammas]
  return guides or [Guide('none')]


def load_classifier(config: ml_collections.ConfigDict, workdir: str, label: str) -> tuple:
  """(graphdef, EMA params) of the 'classifier' run of `config` in `workdir`, checked to predict `label`."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.mesh.data, config.mesh.fsdp = 1, 1
  if config.diffusion.objective != 'classifier':
    raise ValueError(f"the classifier config trains diffusion.objective={config.diffusion.objective!r}; D-CBG "
                     "needs a 'classifier' run (experiments/qm9_classifier.py)")
  if config.data.label != label:
    raise ValueError(f'the classifier predicts data.label={config.data.label!r} but the models target {label!r}')
  restored = experiment_lib.restore_ema(config, workdir)
  return restored.exp.graphdef, restored.params


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True, help='experiment file (experiments/qm9.py)')
  parser.add_argument('--workdirs', nargs='+', required=True,
                      help="training workdirs, one model each, as WORKDIR or WORKDIR:diffusion.objective=udlm,...")
  parser.add_argument('--samplers', nargs='+', default=['ancestral'])
  parser.add_argument('--guidance', default='cfg', help=f'comma-separated, of: {", ".join(GUIDANCE)}')
  parser.add_argument('--classifier', help="workdir of a 'classifier' run (needed by --guidance cbg)")
  parser.add_argument('--classifier_config', help='the classifier run\'s experiment file (default: '
                      'qm9_classifier.py next to --config)')
  parser.add_argument('--label', choices=PROPERTIES, help="the property the runs were trained for (default: "
                      "the config's data.label); sets data.label of the models' and the classifier's configs")
  parser.add_argument('--gammas', default='1', help='comma-separated guidance strengths')
  parser.add_argument('--steps', default='32', help='comma-separated T')
  parser.add_argument('--seeds', default='0', help='comma-separated sampling seeds')
  parser.add_argument('--num_samples', type=int, default=256)
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  names = list(filter(None, args.guidance.split(',')))
  for name in names:
    if name not in GUIDANCE:
      parser.error(f'unknown --guidance {name!r}; valid: {", ".join(GUIDANCE)}')
  if 'cbg' in names and not args.classifier:
    parser.error('--guidance cbg needs --classifier WORKDIR (a run of experiments/qm9_classifier.py)')
  base = config_base.load_experiment(args.config)
  if args.label:
    base.data.label = args.label
  prop = base.data.label if base.data.label != 'none' else 'rings'
  classifier = None
  if 'cbg' in names:
    classifier_config = config_base.load_experiment(
        args.classifier_config or os.path.join(os.path.dirname(args.config), 'qm9_classifier.py'))
    if args.label:
      classifier_config.data.label = args.label
    classifier = load_classifier(classifier_config, args.classifier, prop)
  molecules = qm9.load_molecules(base.data.path, base.data.cache_dir)
  train_stop = split_bounds(len(molecules['smiles']), base.data.train_fraction,
                            base.data.validation_fraction)['train'][1]
  reference = set(molecules['smiles'][:train_stop].tolist())
  gammas = [float(g) for g in args.gammas.split(',')]
  rows = []
  for spec_workdir in args.workdirs:
    workdir, config = model_config(spec_workdir, base)
    restored = experiment_lib.restore_ema(config, workdir)
    exp = restored.exp
    objective = exp.config.diffusion.objective
    for spec in args.samplers:
      if objective == 'udlm' and spec.partition(':')[0] != 'ancestral':
        continue  # ReMDM samplers are for masked models
      for steps in [int(s) for s in args.steps.split(',')]:
        sampler = sampler_config(spec, config.sampler, steps)
        for guide in _guides(exp, names, gammas, classifier):
          for seed in [int(s) for s in args.seeds.split(',')]:
            tokens = generate(exp.graphdef, restored.params, exp.info.vocab_size, exp.info.data_shape[0], sampler,
                              guide, args.num_samples, args.batch_size, jax.random.key(seed), objective=objective)
            s = score(list(exp.info.decode(tokens)), reference, prop)
            rows.append(dict(model=os.path.basename(os.path.normpath(workdir)), sampler=f'{objective}:{spec}',
                             guidance=guide.kind, gamma='-' if guide.kind == 'none' else guide.gamma, steps=steps,
                             seed=seed, samples=args.num_samples, **dataclasses.asdict(s)))
            print(rows[-1], file=sys.stderr, flush=True)
            write_outputs(rows, args.out, prop)  # after every row: a crash keeps what was measured
  print(open(os.path.join(args.out, 'results.md')).read())
  return 0


def run() -> int:
  """`python -m md4_jax.molecules`: bad input (a missing checkpoint, a mismatched classifier, a bad sampler or
  model option) ends with one 'error:' line and exit status 1."""
  try:
    return main(sys.argv[1:])
  except (ValueError, OSError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 1


if __name__ == '__main__':
  sys.exit(run())
