r"""Train-step speed of an experiment: step time, tokens/s, model FLOPs utilisation, memory.

    python benchmarks/mfu.py --config=experiments/owt_small.py --config.train.batch_size=16 \
        --peak_tflops=790 --variants=base,xla_attention,remat          # MD4-S at L=1024 on one H100
    python benchmarks/mfu.py --config=experiments/owt_small.py --config.model.size=tiny \
        --config.data.seq_len=128 --config.train.batch_size=8 --peak_tflops=0   # a CPU smoke run

The step is the training loop's own (`train.jit_train_step`: loss, gradients, AdamW, EMA, NaN guard) on the
config's mesh over all devices, fed random tokens of the config's shape (no dataset is read). Each variant
compiles the step from abstract shapes, runs `--warmup` steps, then times `--steps` steps dispatched back to back
(one block at the end), so the time per step includes nothing the training loop would not pay. Any experiment
runs (images, GenMD4: XLA's FLOP count only); the model FLOPs below are an MD4 transformer's. With several
variants each runs in a process of its own, so the device's peak memory is that variant's.

Model FLOPs per step (PaLM, App. B): 3 x the forward's matmul FLOPs (backward = 2 x forward), counted per token
from the config, for the MD4 objective (one network pass per example):
  forward = 2 [ n_layers (4 d^2 + 3 d h) + d V (+ d_e d with outside_embed) ] + n_layers 4 L d,
d width, h the gated MLP's hidden width, V the head's outputs, L the sequence length (attention scores and
their product with the values, full, not causal). Per-example work (time / label conditioning), the embedding
lookup, norms and the optimizer are left out, so MFU = model FLOPs / time / (devices x peak) is the usual,
conservative figure. XLA's own count of the compiled step (all ops, per device) is printed beside it; XLA counts
a loop body once, so with `scan_layers` (the blocks under one jax.lax.scan) it covers a single block.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from md4_jax.training import experiment as experiment_lib  # noqa: E402
from md4_jax import model as model_lib  # noqa: E402
from md4_jax import train  # noqa: E402
from md4_jax.nn import blocks, transformer  # noqa: E402

VARIANTS = {  # name -> config overrides (dotted paths)
    "base": {},
    "xla_attention": {"model.network.attention": "xla"},  # no cuDNN fused attention
    "remat": {"model.network.remat": True},
    "fp32": {"model.network.dtype": "float32"},
    "scan_layers": {"model.network.scan_layers": True},  # one block compiled, run by jax.lax.scan
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "experiments", "owt_small.py"),
    "experiment config file", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps per variant (0: compile only: FLOP counts, XLA memory)")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed steps per variant after compiling")
_PEAK = flags.DEFINE_float("peak_tflops", 790.0, "the accelerator's measured dense bf16 peak per device "
                           "(TFLOP/s; H100: ~790); 0 = unknown, no MFU")
_MEASURE_PEAK = flags.DEFINE_bool("measure_peak", False, "measure the peak instead: the best of 10 bf16 "
                                  "8192 x 8192 x 8192 matrix products on one device")
_JSON = flags.DEFINE_bool("json", False, "measure the one variant of --variants and print its row as JSON")
_VARIANTS = flags.DEFINE_list("variants", ["base"], f"variants to measure, of: {', '.join(VARIANTS)}")


def train_flops_per_token(network: transformer.TransformerConfig, seq_len: int) -> float:
  """Model FLOPs of one training step per token (forward + backward), from the config (module docstring)."""
  d, n, hidden = network.width, network.num_layers, blocks.mlp_hidden_dim(network.width)
  matmul_params = n * (4 * d * d + 3 * d * hidden) + d * (network.num_outputs or network.vocab_size)
  if network.outside_embed:
    matmul_params += network.head_dim * d
  return 3.0 * (2.0 * matmul_params + n * 4.0 * seq_len * d)


def measured_peak_tflops(n: int = 8192, repeats: int = 10) -> float:
  """bf16 TFLOP/s of the fastest of `repeats` n x n x n matrix products on the first device (random data)."""
  a, b = (jax.random.normal(jax.random.key(i), (n, n), jax.numpy.bfloat16) for i in (0, 1))
  matmul = jax.jit(jax.numpy.matmul)
  jax.block_until_ready(matmul(a, b))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    times.append(time.perf_counter() - start)
  return 2 * n**3 / min(times) / 1e12


def measure(config, steps: int, warmup: int) -> dict:
  exp = experiment_lib.build(config)
  info = exp.info
  step_fn = train.jit_train_step(exp)
  batch_size, seq_len = config.train.batch_size, int(np.prod(info.data_shape))
  with jax.set_mesh(exp.mesh):
    start = time.perf_counter()
    compiled = step_fn.lower(exp.abstract_state, exp.abstract_batch(batch_size)).compile()
    compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # one dict per device program in older jax
  memory = compiled.memory_analysis()
  step_s, loss = (_time_steps(exp, compiled, batch_size, steps, warmup) if steps > 0
                  else (float("nan"), float("nan")))
  tokens = batch_size * seq_len
  model_flops = float("nan")  # counted for MD4 transformers only; other experiments get XLA's count alone
  if config.model.kind == "transformer" and config.diffusion.objective == "md4":
    network = transformer.TransformerConfig(**model_lib.network_kwargs(
        config.model, info.vocab_size, info.num_classes, info.data_shape))
    model_flops = train_flops_per_token(network, seq_len) * tokens
  stats = jax.devices()[0].memory_stats() or {}
  return {
      "device": f"{jax.devices()[0].device_kind} x {jax.device_count()}", "batch": batch_size, "seq_len": seq_len,
      "params_m": sum(x.size for x in jax.tree.leaves(exp.abstract_state.params)) / 1e6,
      "compile_s": compile_s, "step_ms": 1e3 * step_s, "tokens_per_s": tokens / step_s,
      "model_tflop_per_step": model_flops / 1e12,
      "xla_tflop_per_step": cost.get("flops", float("nan")) * jax.device_count() / 1e12,
      "model_tflops": model_flops / step_s / 1e12,
      "xla_temp_gib": memory.temp_size_in_bytes / 2**30,
      "peak_gib": stats.get("peak_bytes_in_use", float("nan")) / 2**30,
      "loss": loss,
  }


def _time_steps(exp, compiled, batch_size: int, steps: int, warmup: int) -> tuple[float, float]:
  """(seconds per step over `steps` steps after `warmup`, the last objective) on random tokens."""
  info, rng = exp.info, np.random.default_rng(0)
  local = {"x": rng.integers(0, info.vocab_size, (batch_size // jax.process_count(),) + info.data_shape)}
  if info.num_classes:
    local["label"] = rng.integers(0, info.num_classes, (batch_size // jax.process_count(),))
  batch = exp.global_batch(local)
  state = exp.init_state()
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / steps, float(metrics["objective"])


def _measure_variant(name: str) -> dict:
  config = _CONFIG.value.copy_and_resolve_references()
  config.data.path = None  # shapes only; the batches are random tokens
  config.update_from_flattened_dict(VARIANTS[name])
  try:
    return measure(config, _STEPS.value, _WARMUP.value)
  except jax.errors.JaxRuntimeError as error:  # out of memory is a result too: report it and go on
    return {"error": str(error).splitlines()[0][:160]}


def _run_isolated(name: str) -> dict:
  """`_measure_variant(name)` in a child process (this command line, one variant, --json)."""
  argv, skip_value = [], False
  for arg in sys.argv[1:]:  # this command line without --variants (and its value) and the peak measurement
    if skip_value or arg.startswith(("--variants=", "--measure_peak", "--nomeasure_peak")):
      skip_value = False
    elif arg == "--variants":
      skip_value = True
    else:
      argv.append(arg)
  child = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, f"--variants={name}", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
  sys.stderr.write(child.stderr)
  lines = child.stdout.strip().splitlines()
  if child.returncode or not lines:
    return {"error": f"exit {child.returncode}: " + (child.stderr.strip().splitlines() or [""])[-1][:160]}
  return json.loads(lines[-1])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    raise app.UsageError(f"unknown --variants {unknown}; valid: {', '.join(VARIANTS)}")
  if _JSON.value:  # one variant, for the parent process (below): its row as the last line of stdout
    print(json.dumps(_measure_variant(_VARIANTS.value[0])))
    return
  # Each variant in a process of its own when there are several: the device's peak memory and the compilation
  # caches then belong to that variant alone (and a GPU is not held by this process while they run).
  rows = [(name, _run_isolated(name) if len(_VARIANTS.value) > 1 else _measure_variant(name))
          for name in _VARIANTS.value]
  for name, row in rows:
    print(f"{name}: {row}", file=sys.stderr, flush=True)
  peak = measured_peak_tflops() if _MEASURE_PEAK.value else _PEAK.value
  if _MEASURE_PEAK.value:
    print(f"measured bf16 peak: {peak:.0f} TFLOP/s per device ({jax.devices()[0].device_kind})")
  print("\n| variant | device | batch x L | params (M) | compile (s) | step (ms) | tokens/s | model TFLOP/step | "
        "XLA TFLOP/step | model TFLOP/s | MFU | XLA temp (GiB) | peak (GiB) |")
  print("|" + "---|" * 13)
  for name, r in rows:
    if "error" in r:
      print(f"| {name} | failed: {r['error']} |" + " |" * 11)
      continue
    mfu = (f"{100 * r['model_tflops'] / (peak * jax.device_count()):.1f}%"
           if peak > 0 and np.isfinite(r["model_tflops"]) else "-")
    print(f"| {name} | {r['device']} | {r['batch']} x {r['seq_len']} | {r['params_m']:.1f} | {r['compile_s']:.1f} "
          f"| {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['model_tflop_per_step']:.3f} | "
          f"{r['xla_tflop_per_step']:.3f} | {r['model_tflops']:.2f} | {mfu} | {r['xla_temp_gib']:.2f} | "
          f"{r['peak_gib']:.2f} |")


if __name__ == "__main__":
  app.run(main)
