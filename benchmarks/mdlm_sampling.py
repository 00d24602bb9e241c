r"""Sampling a converted MDLM DiT on this machine: seconds per step, denoiser calls and peak memory (issue 18).

  python benchmarks/mdlm_sampling.py                              # reduced net (2 x 128), B = 1 and 4
  python benchmarks/mdlm_sampling.py --size small --batches 1     # MD4-S size (12 x 768, mdlm-owt's shape)

Setting: a random checkpoint of MDLM's DiT in the PyTorch layout (`--size`: mdlm_dit.MDLM_DIT_SIZES, V = 50257 + mask)
written as a bare .safetensors state dict and converted with md4_jax.convert, as a user converts a release; then
sampled as the binaries sample (md4_jax.generate.generate: the head only where tokens are drawn) with the workdir's
sampler, the exact ReMDM reproduction setting (ReMDM loop, eta 0.02, grid 'remdm', top-p 0.9 'remdm_sort',
caching), at L = 1024, T = 64, all masks at the start, float32 compute. Each batch size runs in a process of its
own: the first run compiles, the second is timed; peak memory is the process's peak resident set (ru_maxrss:
weights, XLA buffers, everything), and XLA's buffer assignment of the compiled sampler is printed beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def random_state(size: str, seed: int = 0, vocab_rows: int = 50258):
  """(Architecture, state dict torch key -> float32 without the 'backbone.' prefix) of a random MDLM DiT of size
  `size`: every layer random (zero-initialised ones too), so predictions are spread as a trained model's."""
  from md4_jax import mdlm_weights  # pylint: disable=g-import-not-at-top
  from md4_jax.nn.mdlm_dit import MDLM_DIT_SIZES  # pylint: disable=g-import-not-at-top
  s = MDLM_DIT_SIZES[size]
  arch = mdlm_weights.Architecture(vocab_rows - 1, s["num_layers"], s["num_heads"], s["width"], s["cond_dim"], 4,
                                   False, None)
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in mdlm_weights.expected_shapes(arch).items():
    base = 1.0 if key.endswith("norm1.weight") or key.endswith("norm2.weight") or "norm_final" in key else 0.0
    scale = 2.0 / np.sqrt(shape[-1]) if len(shape) == 2 and "embedding" not in key else 0.3
    state[key] = (base + scale * rng.standard_normal(shape)).astype(np.float32)
  return arch, state


def write_random_checkpoint(path: str, size: str) -> None:
  """`random_state(size)` as a .safetensors state dict with the 'backbone.' prefix, as a release holds it."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file({"backbone." + k: v for k, v in random_state(size)[1].items()}, path)


def one_run(workdir: str, batch: int, steps: int) -> dict:
  """Compile run + timed run of the workdir's sampler at batch `batch` (this process)."""
  import jax  # pylint: disable=g-import-not-at-top
  from md4_jax.training import experiment, run_config  # pylint: disable=g-import-not-at-top
  from md4_jax import generate  # pylint: disable=g-import-not-at-top
  config = run_config.load(workdir)
  config.model.network.dtype = "float32"
  config.mesh.data, config.mesh.fsdp = 1, 1
  config.sampler.num_steps = steps
  restored = experiment.restore_ema(config, workdir)
  z_init = np.full((batch, config.data.seq_len), restored.exp.info.vocab_size, np.int32)
  draw = lambda seed: generate.generate(restored.exp.graphdef, restored.params, config.sampler, z_init,
                                       jax.random.key(seed), mesh=restored.exp.mesh, batch_size=batch)
  start = time.perf_counter()
  draw(0)
  first = time.perf_counter() - start
  tokens, stats = draw(1)
  assert tokens.max() < restored.exp.info.vocab_size
  peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB
  return {"batch": batch, "steps": steps, "step_s": stats["wall_s"] / steps, "nfe": stats["nfe"],
          "compile_s": first - stats["wall_s"], "peak_rss_gib": peak_rss_gib,
          "params": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(restored.params))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="reduced", choices=["tiny", "reduced", "small"])
  parser.add_argument("--batches", default="1,4")
  parser.add_argument("--steps", type=int, default=64)
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # WORKDIR:BATCH, one measurement
  args = parser.parse_args()
  if args.child:
    workdir, batch = args.child.rsplit(":", 1)
    print(json.dumps(one_run(workdir, int(batch), args.steps)), flush=True)
    return
  from md4_jax import convert  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.safetensors")
    write_random_checkpoint(path, args.size)
    print(convert.convert("mdlm", path, os.path.join(tmp, "w")), flush=True)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
      out = subprocess.run([sys.executable, __file__, f"--child={tmp}/w:{batch}", f"--steps={args.steps}"],
                           check=True, capture_output=True, text=True).stdout
      rows.append(json.loads(out.strip().splitlines()[-1]))
      print(rows[-1], flush=True)
  print("\n| net | params | B | T | s / step | NFE | compile (s) | peak RSS (GiB) |\n|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| mdlm_dit {args.size} | {r['params'] / 1e6:.1f}M | {r['batch']} | {r['steps']} | {r['step_s']:.3f} | "
          f"{r['nfe']:.0f} | {r['compile_s']:.1f} | {r['peak_rss_gib']:.2f} |")


if __name__ == "__main__":
  main()
