r"""ReMDM's Table 1 (OpenWebText, L = 1024) on a converted MDLM checkpoint: MAUVE, Gen PPL and entropy of MDLM† and
ReMDM† (loop), with samples/s, denoiser calls and peak memory (issue 18; remdm.md §3). Needs a GPU for real sizes.

  python -m md4_jax.convert --source mdlm --input mdlm-owt/ --output /ckpt/mdlm_owt
  python benchmarks/remdm_table1.py --workdir /ckpt/mdlm_owt --gpt2_large /models/gpt2-large \
      --references /data/owt_valid_5000.npy [--num_samples 5000] [--steps 1024,2048,4096] [--batch_size 64] \
      [--time_limit 36000]
  python benchmarks/remdm_table1.py --random small --num_samples 64 --steps 1024   # speed only, random weights
  python benchmarks/remdm_table1.py --smoke       # CPU rehearsal at toy sizes (random toy DiT, random tiny GPT-2)

Samplers (sampling/config.py, the exact ReMDM reproduction setting): MDLM† = 'ancestral' (sigma = 0) and ReMDM† =
the workdir's sampler (loop, eta 0.02, t_on 0.55, t_off 0.05, alpha_on 0.9), both on grid 'remdm' (alpha_t = 1 - t,
float32 linspace(1, 1e-5, T + 1)), top-p 0.9 by 'remdm_sort', cached predictions, argmax noise removal; samples in
batches of --batch_size (the reference draws one at a time: the distribution is the same, caching is per batch).
Metrics (md4_jax.evaluation.quality.text_quality, remdm.md §3.1): entropy of each sample's ids (mean), Gen PPL under GPT-2 Large
(token-weighted, the first EOS counted), MAUVE of GPT-2 Large features against --references ([M, L] GPT-2 ids in a
.npy, e.g. 5,000 random validation blocks). Runs go in the order of --steps, MDLM then ReMDM; one that would end
after --time_limit seconds (estimated from the previous run's rate) is skipped and marked so.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jax  # noqa: E402  pylint: disable=g-import-not-at-top
import ml_collections  # noqa: E402  pylint: disable=g-import-not-at-top

from md4_jax import convert, generate, mdlm_weights, sampling  # noqa: E402
from md4_jax.training import experiment, run_config
from md4_jax.evaluation import quality
from md4_jax.data import gpt2_tokenizer  # noqa: E402
from mdlm_sampling import random_state, write_random_checkpoint  # noqa: E402

PAPER = {  # ReMDM Table 1 (arXiv:2503.00307 v4): MAUVE, Gen PPL, entropy at T = 1024 / 2048 / 4096
    "MDLM†": {1024: (0.042, 51.3, 5.46), 2048: (0.037, 51.3, 5.46), 4096: (0.035, 50.9, 5.45)},
    "ReMDM†": {1024: (0.403, 28.6, 5.38), 2048: (0.610, 22.8, 5.30), 4096: (0.656, 17.6, 5.20)},
}


def samplers(workdir_sampler: ml_collections.ConfigDict, steps: int) -> dict[str, ml_collections.ConfigDict]:
  """MDLM† and ReMDM† at T = steps, both in the exact setting."""
  remdm = ml_collections.ConfigDict(workdir_sampler.to_dict())
  remdm.num_steps = steps
  mdlm = sampling.default_config("ancestral")
  for field in ("num_steps", "schedule", "eps", "grid", "top_p", "top_p_rule", "final", "cache"):
    mdlm[field] = remdm[field]
  return {"MDLM†": mdlm, "ReMDM†": remdm}


def peak_gib() -> float:
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform == "gpu" else None
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**30
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU: the process's peak resident set


def random_gpt2(path: str) -> None:
  """A random 1-layer GPT-2 of GPT-2's vocabulary and context, saved as a transformers folder (rehearsal)."""
  import transformers  # pylint: disable=g-import-not-at-top
  config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=gpt2_tokenizer.VOCAB_SIZE)
  transformers.GPT2LMHeadModel(config).save_pretrained(path)


def smoke_setup(tmp: str, args) -> None:
  """A converted random toy DiT (L = 64), a random tiny GPT-2 scorer and random references, in `tmp`."""
  folder = os.path.join(tmp, "hf")
  os.makedirs(folder)
  write_random_checkpoint(os.path.join(folder, "model.safetensors"), "tiny")
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"vocab_size": gpt2_tokenizer.VOCAB_SIZE + 1, "model_length": 64, "n_heads": 2}, f)
  args.workdir = os.path.join(tmp, "w")
  print(convert.convert("mdlm", folder, args.workdir), flush=True)
  try:
    random_gpt2(os.path.join(tmp, "gpt2"))
    args.gpt2_large = os.path.join(tmp, "gpt2")
  except ImportError as error:
    print(f"no scorer in the rehearsal ({error}): entropy only", flush=True)
  refs = np.random.default_rng(0).integers(0, gpt2_tokenizer.VOCAB_SIZE, (args.num_samples, 64))
  args.references = os.path.join(tmp, "refs.npy")
  np.save(args.references, refs)


def table(results: list[dict], steps: list[int]) -> str:
  head = " / ".join(f"T={t}" for t in steps)
  lines = [f"| method | MAUVE {head} | Gen PPL | Entropy | samples/s | NFE per batch | peak memory (GiB) |",
           "|---|---|---|---|---|---|---|"]
  fmt = lambda v, d: "n/a" if v is None else f"{v:.{d}f}"
  for method in ("MDLM†", "ReMDM†"):
    runs = {r["steps"]: r for r in results if r["method"] == method}
    col = lambda key, d: " / ".join(fmt(runs[t].get(key), d) if t in runs else "not run" for t in steps)
    lines.append(f"| {method} (ours) | {col('mauve', 3)} | {col('gen_ppl', 1)} | {col('entropy', 2)} | "
                 f"{col('samples_per_s', 3)} | {col('nfe', 0)} | {col('peak_gib', 2)} |")
    paper = PAPER[method]
    cell = lambda i, d: " / ".join(f"{paper[t][i]:.{d}f}" if t in paper else "-" for t in steps)
    lines.append(f"| {method} (paper) | {cell(0, 3)} | {cell(1, 1)} | {cell(2, 2)} | | | |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", help="converted workdir (python -m md4_jax.convert)")
  parser.add_argument("--random", choices=["tiny", "reduced", "small"], help="instead: random weights of this size")
  parser.add_argument("--smoke", action="store_true", help="CPU rehearsal at toy sizes")
  parser.add_argument("--gpt2_large", help="GPT-2 Large transformers folder (Gen PPL, MAUVE features)")
  parser.add_argument("--references", help=".npy of reference GPT-2 ids [M, L] for MAUVE")
  parser.add_argument("--num_samples", type=int, default=5000)
  parser.add_argument("--steps", default="1024,2048,4096")
  parser.add_argument("--batch_size", type=int, default=0, help="0: num_samples rounded to the devices, <= 64 each")
  parser.add_argument("--dtype", default=None, help="override the network's compute dtype (float32 on a CPU)")
  parser.add_argument("--time_limit", type=float, default=float("inf"), help="seconds for all runs")
  parser.add_argument("--seed", type=int, default=1)
  args = parser.parse_args()
  steps = [int(s) for s in args.steps.split(",")]
  start = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    if args.smoke:
      smoke_setup(tmp, args)
    elif args.random:  # no container file: needs neither safetensors nor torch
      arch, state = random_state(args.random)
      loaded = mdlm_weights.Loaded(arch, mdlm_weights.to_params(state, arch), f"random {args.random} weights")
      args.workdir = os.path.join(tmp, "w")
      print(convert.write_workdir(loaded, args.workdir), flush=True)
    if not args.workdir:
      parser.error("give --workdir, --random or --smoke")
    config = run_config.load(args.workdir)
    if config is None:
      raise SystemExit(f"error: {args.workdir} has no config.json (convert with python -m md4_jax.convert)")
    if args.dtype or args.smoke:
      config.model.network.dtype = args.dtype or "float32"
    config.mesh.data, config.mesh.fsdp = -1, 1
    restored = experiment.restore_ema(config, args.workdir)
    scorer = quality.gpt2_large_scorer(args.gpt2_large) if args.gpt2_large else None
    references = np.load(args.references) if args.references else None
    reference_features = scorer.features(references) if scorer is not None and references is not None else None
    batch_size = generate.auto_batch_size(args.batch_size, args.num_samples, restored.exp.mesh.size)
    z_init = np.full((args.num_samples, config.data.seq_len), restored.exp.info.vocab_size, np.int32)
    results, rate = [], None  # rate: seconds per (sample x step) of the last run
    for t in steps:
      for method, sampler in samplers(config.sampler, t).items():
        if rate is not None and time.time() - start + rate * args.num_samples * t > args.time_limit:
          print(f"{method} T={t}: skipped (would pass --time_limit={args.time_limit:.0f}s)", flush=True)
          continue
        tokens, stats = generate.generate(restored.exp.graphdef, restored.params, sampler, z_init,
                                          jax.random.key(args.seed), mesh=restored.exp.mesh, batch_size=batch_size,
                                          progress=f"{method} T={t}")
        rate = stats["wall_s"] / (args.num_samples * t)
        row = {"method": method, "steps": t, "samples_per_s": args.num_samples / stats["wall_s"], "nfe": stats["nfe"],
               "peak_gib": peak_gib(), "entropy": float(quality.entropy(tokens).mean())}
        if scorer is not None:
          row.update(quality.text_quality(tokens, scorer, reference_features, eos_id=gpt2_tokenizer.EOS_ID))
        results.append(row)
        print(json.dumps(row), flush=True)
  print(f"\n{table(results, steps)}\n\n{args.num_samples} samples of L = {config.data.seq_len} per run, batch "
        f"{batch_size}, on {jax.devices()[0].device_kind}; {time.time() - start:.0f}s in all.")


if __name__ == "__main__":
  main()
