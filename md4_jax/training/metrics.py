"""Metric output on process 0: a console progress line, JSONL and TensorBoard (tensorboardX)."""

from __future__ import annotations

import json
import os
import time

import jax

from md4_jax.training import atomic


def fmt_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def drop_rows_after(path: str, step: int) -> int:
  """Removes the rows of steps > `step` (and a partly written last line) from the JSONL file at `path`, atomically;
  returns how many were removed. A run resumed from checkpoint `step` replays those steps and writes them again."""
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue  # cut off by a kill during the write
    if isinstance(row, dict) and row.get("step", 0) <= step:
      kept.append(line)
  if len(kept) < len(lines):
    atomic.write(path, "".join(line + "\n" for line in kept))
  return len(lines) - len(kept)


class MetricWriter:
  """Writes scalars to workdir/metrics.jsonl and workdir/tensorboard on process 0.

  `resume_step`: the step the run starts from; rows of later steps (written before a crash, replayed now) are
  dropped from metrics.jsonl, so it holds one row per step and kind.
  """

  def __init__(self, workdir: str, total_steps: int, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self._last = None  # (time, step) of the last progress line
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      dropped = drop_rows_after(path, resume_step)
      if dropped:
        print(f"{path}: dropped {dropped} row(s) after step {resume_step}, which this run replays", flush=True)
      self._jsonl = open(path, "a", encoding="utf-8")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    try:
      self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
      self._jsonl.flush()
    except OSError as error:  # a full disk: say which file
      raise OSError(error.errno, f"writing {self._jsonl.name} failed: {error.strerror}") from error
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    self._tb.flush()

  def progress(self, step: int, scalars: dict[str, float]) -> float | None:
    """Prints 'step | metrics | steps/s | ETA'; returns steps/s since the last call (None the first time)."""
    now = time.time()
    rate = None
    if self._last is not None and step > self._last[1]:
      rate = (step - self._last[1]) / (now - self._last[0])
    self._last = (now, step)
    if self.enabled:
      parts = [f"step {step}/{self.total_steps}"] + [f"{k} {v:.4g}" for k, v in scalars.items()]
      if rate:
        parts += [f"{rate:.2f} steps/s", f"ETA {fmt_duration((self.total_steps - step) / rate)}"]
      print(" | ".join(parts), flush=True)
    return rate

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
