r"""Sampler cost: per-step wall time, denoiser calls (NFE), share of time outside the network, memory.

  python benchmarks/sampling.py                          # print the table (defaults: the issue's setting)
  python benchmarks/sampling.py --update BENCHMARKS.md   # also rewrite its '## Sampling' section

Setting: md4_jax.nn.transformer 'tiny' (4 layers, 4 heads, width 128, time-conditioned, float32) with random
weights (its zero-initialised head perturbed so predictions are not uniform), L = 1024, V = 50257, batch 4, T = 64,
MD4 ancestral (default_config('ancestral'): cosine grid, no top-p) and ReMDM loop (default_config('remdm'):
eta 0.02, t_on 0.55, t_off 0.05, alpha_on 0.9, ReMDM top-p 0.9), all masks at the start, no caching.

Per sampler, the compiled loop is timed on its own (the host-side set-up of `sample`, a few ms, is left out):
wall time and NFE with the network. The sampler's own work (decisions, top-p, draws, bookkeeping) is timed
directly, as the same compiled loop with a free denoiser that returns a fixed prediction (a random [B, L, V]
log-softmax passed in as an argument); the network, as the denoiser (log_softmax of the transformer) per call in a
jitted loop of its own, right before and right after the sampler run. The share outside the network is
own / (own + NFE / T x network): on a shared CPU whose load changes from minute to minute, the difference
"wall with the network - NFE x network" swings by tens of percent either way and is not used. Memory is XLA's
buffer assignment of the compiled sampler (arguments + outputs + temporaries); on a GPU also the device's peak.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from md4_jax import sampling  # noqa: E402  pylint: disable=g-import-not-at-top
from md4_jax.nn import transformer  # noqa: E402  pylint: disable=g-import-not-at-top
from md4_jax.sampling import loop  # noqa: E402  pylint: disable=g-import-not-at-top

SECTION = "## Sampling"


def make_denoiser(size: str, vocab: int, dtype: str = "float32"):
  """(denoise_fn, (features_fn, head_fn)): log_softmax of a random-weight transformer, and the same split into
  per-position features and the vocabulary head (sampled with head_fn: the head only where tokens are drawn);
  params passed as traced arguments."""
  config = transformer.TransformerConfig(vocab_size=vocab, dtype=dtype, **transformer.TRANSFORMER_SIZES[size])
  model = transformer.Transformer(config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  # Perturb every parameter (the head and adaLN are zero-initialised), so the prediction has a realistic spread.
  leaves = [p + 0.5 * jax.random.normal(k, p.shape, p.dtype) / np.sqrt(max(p.shape[0] if p.ndim else 1, 1))
            for p, k in zip(leaves, keys)]
  params = jax.tree.unflatten(treedef, leaves)

  def denoise(params, z, t):
    return jax.nn.log_softmax(nnx.merge(graphdef, params)(z, t), axis=-1)

  def features(params, z, t):
    return nnx.merge(graphdef, params).head_features(z, t)

  def head(params, rows):
    return jax.nn.log_softmax(nnx.merge(graphdef, params).head(rows), axis=-1)

  partial = jax.tree_util.Partial
  return partial(denoise, params), (partial(features, params), partial(head, params))


def bytes_of(compiled) -> int | None:
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
             - analysis.alias_size_in_bytes)


def run_compiled(name: str, denoise_fn, z_init, vocab: int, steps: int, repeats: int, head_fn=None) -> dict:
  """Compiles the sampler loop of `name` for `denoise_fn` (features with a head_fn), then times it (host-side
  set-up of `sample` excluded)."""
  config = sampling.default_config(name)
  config.num_steps = steps
  frozen = sampling.validate_config(config)
  plan = loop.make_plan(frozen)
  out_dim = jax.eval_shape(denoise_fn, z_init, jax.ShapeDtypeStruct(z_init.shape[:1], jnp.float32)).shape[-1]
  static = loop.make_static(frozen, plan, vocab, z_init.size, False, out_dim)
  start = time.perf_counter()
  compiled = loop.run_jit.lower(denoise_fn, jax.random.key(0), z_init, plan, None, None, head_fn,
                                static=static).compile()
  compile_s = time.perf_counter() - start
  walls, nfes = [], []
  for r in range(repeats):
    start = time.perf_counter()
    tokens, stats = compiled(denoise_fn, jax.random.key(r + 1), z_init, plan, None, None, head_fn)
    jax.block_until_ready(tokens)
    walls.append(time.perf_counter() - start)
    nfes.append(int(stats["nfe"]))
  return {"name": name, "compile_s": compile_s, "wall_s": float(np.median(walls)), "nfe": int(np.median(nfes)),
          "steps": int(plan.t.shape[0]), "bytes": bytes_of(compiled)}


def measure(name: str, denoise_fn, batch: int, length: int, vocab: int, steps: int, repeats: int) -> dict:
  """The run with the network, and the same run with a free denoiser (a fixed prediction passed in)."""
  z_init = jnp.full((batch, length), vocab, jnp.int32)
  jax.block_until_ready(sampling.sample(denoise_fn, jax.random.key(0), z_init[:, :8],  # the public path runs
                                        sampling.default_config(name)))
  before, network_bytes = time_network(denoise_fn, batch, length, vocab, steps + 1)
  result = run_compiled(name, denoise_fn, z_init, vocab, steps, repeats)
  after, _ = time_network(denoise_fn, batch, length, vocab, steps + 1)
  result["network_s"], result["network_bytes"] = 0.5 * (before + after), network_bytes
  fixed = jax.nn.log_softmax(3.0 * jax.random.normal(jax.random.key(4), (batch, length, vocab)), axis=-1)
  free = jax.tree_util.Partial(lambda fixed, z, t: fixed, fixed)
  result["free_wall_s"] = run_compiled(name, free, z_init, vocab, steps, repeats)["wall_s"]
  return result


def time_network(denoise_fn, batch: int, length: int, vocab: int, calls: int) -> tuple[float, int | None]:
  """Seconds per denoiser call inside one jitted loop of `calls` calls on a half-masked input (t changes each call
  and the whole output is reduced, so nothing is hoisted or sliced away), and one call's XLA memory."""
  z = jnp.where(jax.random.uniform(jax.random.key(2), (batch, length)) < 0.5, vocab,
                jax.random.randint(jax.random.key(3), (batch, length), 0, vocab)).astype(jnp.int32)

  def calls_in_a_loop(fn, z):
    def body(i, acc):
      return acc + jnp.max(fn(z, jnp.full((batch,), 1.0 - i / calls, jnp.float32)))
    return jax.lax.fori_loop(0, calls, body, jnp.float32(0))

  looped = jax.jit(calls_in_a_loop).lower(denoise_fn, z).compile()
  start = time.perf_counter()
  jax.block_until_ready(looped(denoise_fn, z))
  seconds = (time.perf_counter() - start) / calls
  single = jax.jit(lambda fn, z, t: fn(z, t)).lower(denoise_fn, z, jnp.zeros((batch,), jnp.float32)).compile()
  return seconds, bytes_of(single)


def compare_head(name: str, denoise_fn, factored, batch: int, length: int, vocab: int, steps: int,
                 repeats: int) -> dict:
  """Per-step wall and XLA memory of the sampler with the full denoiser and with the head at drawn positions,
  the two timed alternately (`repeats` times each, medians) so that load changes hit both alike."""
  z_init = jnp.full((batch, length), vocab, jnp.int32)
  full, head = [], []
  for _ in range(repeats):
    full.append(run_compiled(name, denoise_fn, z_init, vocab, steps, 1))
    head.append(run_compiled(name, factored[0], z_init, vocab, steps, 1, head_fn=factored[1]))
  median = lambda runs: float(np.median([r["wall_s"] for r in runs])) / runs[0]["steps"]
  return {"name": name, "steps": full[0]["steps"], "nfe": (full[0]["nfe"], head[0]["nfe"]),
          "full_step_s": median(full), "head_step_s": median(head), "full_bytes": full[0]["bytes"],
          "head_bytes": head[0]["bytes"]}


def head_table(rows) -> str:
  lines = ["| sampler | steps | NFE | per step, full denoiser (ms) | per step, head at drawn positions (ms) | "
           "speed-up | XLA memory full / head (GiB) |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['name']} | {r['steps']} | {r['nfe'][0]} / {r['nfe'][1]} | {1e3 * r['full_step_s']:.1f} | "
                 f"{1e3 * r['head_step_s']:.1f} | {r['full_step_s'] / r['head_step_s']:.2f}x | "
                 f"{gib(r['full_bytes'])} / {gib(r['head_bytes'])} |")
  return "\n".join(lines)


def gib(value) -> str:
  return "n/a" if value is None else f"{value / 2**30:.2f}"


def table(results, peak) -> str:
  lines = ["| sampler | steps | NFE | per step with the network (ms) | sampler's own work per step (ms) | "
           "network per call (ms) | outside the network | XLA memory (GiB) | compile (s) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    own = r["free_wall_s"] / r["steps"]
    network = r["nfe"] / r["steps"] * r["network_s"]
    lines.append(f"| {r['name']} | {r['steps']} | {r['nfe']} | {1e3 * r['wall_s'] / r['steps']:.1f} | "
                 f"{1e3 * own:.1f} | {1e3 * r['network_s']:.1f} | {100 * own / (own + network):.1f}% | "
                 f"{gib(r['bytes'])} | {r['compile_s']:.1f} |")
  lines.append(f"\nsampler's own work = the same compiled loop with a free denoiser (a fixed prediction passed in); "
               f"network = the denoiser per call in a jitted loop of its own (mean of one loop of T + 1 calls right "
               f"before and one right after the sampler run); outside the network = own / (own + NFE / T x network). "
               f"One network call alone needs {gib(results[0]['network_bytes'])} GiB XLA memory"
               + (f"; device peak bytes in use over the whole script: {gib(peak)} GiB." if peak else "."))
  return "\n".join(lines)


def update_section(path: str, body: str) -> None:
  """Replaces (or appends) the '## Sampling' section of `path`, leaving every other section alone."""
  text = pathlib.Path(path).read_text() if os.path.exists(path) else "# Benchmarks\n"
  lines = text.splitlines()
  if SECTION in lines:
    start = lines.index(SECTION)
    stop = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    lines = lines[:start] + body.rstrip("\n").splitlines() + ([""] if stop < len(lines) else []) + lines[stop:]
  else:
    lines = lines + [""] + body.rstrip("\n").splitlines()
  pathlib.Path(path).write_text("\n".join(lines) + "\n")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=1024)
  parser.add_argument("--vocab", type=int, default=50257)
  parser.add_argument("--steps", type=int, default=64)
  parser.add_argument("--size", default="tiny", choices=sorted(transformer.TRANSFORMER_SIZES))
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="the network's compute dtype (parameters stay float32)")
  parser.add_argument("--samplers", nargs="+", default=["ancestral", "remdm"])
  parser.add_argument("--repeats", type=int, default=1, help="timed runs per sampler (median)")
  parser.add_argument("--update", default=None, help="markdown file whose '## Sampling' section to rewrite")
  parser.add_argument("--compare_head", action="store_true",
                      help="instead: the full denoiser vs the vocabulary head only where tokens are drawn")
  args = parser.parse_args()

  denoise_fn, factored = make_denoiser(args.size, args.vocab, args.dtype)
  if args.compare_head:
    print(head_table([compare_head(name, denoise_fn, factored, args.batch, args.length, args.vocab, args.steps,
                                   args.repeats) for name in args.samplers]))
    return
  results = [measure(name, denoise_fn, args.batch, args.length, args.vocab, args.steps, args.repeats)
             for name in args.samplers]
  device = jax.devices()[0]
  peak = (device.memory_stats() or {}).get("peak_bytes_in_use") if device.platform == "gpu" else None
  body = table(results, peak)
  print(body)
  if args.update:
    command = "python benchmarks/sampling.py " + " ".join(sys.argv[1:])
    header = (f"{SECTION}\n\nCommand: `{command}` ({datetime.date.today()}, {platform.machine()}, "
              f"{os.cpu_count()} CPU cores, device {device.device_kind}, jax {jax.__version__}). "
              f"{args.size} transformer (md4_jax.nn.transformer, {args.dtype}), B={args.batch}, L={args.length}, "
              f"V={args.vocab}, T={args.steps}, no caching; see the script's docstring for the method. Target: the "
              f"time outside the network at most 10% of a step and B=4 within 2 GiB (the public PyTorch ReMDM code "
              f"spends 64-95% of each step outside the network at these sizes and peaks near 11 GiB).\n\n")
    update_section(args.update, header + body)


if __name__ == "__main__":
  main()
