"""One report for a sweep, read from its members' workdirs: ROOT/report.md, ROOT/report.csv and ROOT/report.png.

A row per member: the swept keys, status, steps done, the last validation bits per token (with its standard error
where the run logged one), the best value, wall time, and any sample-quality columns. Members that differ only in
`seed` form one setting: mean, standard deviation (ddof 1) and count of their last validation values; the best
setting (lowest mean) is marked. The plot: validation bits per token against step, one line per setting (the seed
mean, a band of +- one standard deviation where there are several seeds).
"""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np

from md4_jax.evaluation import tables
from md4_jax.training import atomic
from md4_jax.sweeps.sweep_spec import RESERVED, Member

EVAL_KEY = "eval/bits_per_token"
STDERR_KEY = "eval/bits_per_token_stderr"


def read_metrics(workdir: str) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl ([] if there is none); a partly written last line is skipped."""
  rows = []
  try:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          pass
  except FileNotFoundError:
    pass
  return rows


def steps_done(rows: list[dict]) -> int:
  return max((int(r["step"]) for r in rows), default=0)


def status_path(root: str, name: str, suffix: str = "json", host: str = "") -> str:
  """ROOT/_sweep/<name>[@host].<suffix>: a multi-host sweep's workers (`host` = their hostname) keep their own."""
  return os.path.join(root, RESERVED, f"{name}{'@' + host if host else ''}.{suffix}")


def read_status(root: str, name: str) -> dict:
  """What the sweep recorded of member `name` ({} if nothing): status, exit_code, log_tail, wall_s (of a
  multi-host sweep: the first worker's record in name order)."""
  records = sorted(glob.glob(os.path.join(glob.escape(os.path.join(root, RESERVED)), glob.escape(name) + "@*.json")))
  for path in [status_path(root, name)] + records:
    try:
      with open(path, encoding="utf-8") as f:
        return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
      pass
  return {}


def member_row(root: str, member: Member, num_steps: int) -> dict:
  """The report row of one member (see the module docstring); `curve` holds its (step, bits/token) points."""
  rows = read_metrics(os.path.join(root, member.name))
  record = read_status(root, member.name)
  done = steps_done(rows)
  evals = [r for r in rows if EVAL_KEY in r]
  last = evals[-1] if evals else {}
  if done >= num_steps:
    status = "done"
  elif record.get("status") in ("failed", "running"):
    status = record["status"] if record["status"] == "running" else f"failed (exit {record.get('exit_code')})"
  else:
    status = "interrupted" if done else "not started"
  quality = {}
  try:
    with open(status_path(root, member.name, "quality.json"), encoding="utf-8") as f:
      quality = json.load(f).get("metrics", {})
  except (FileNotFoundError, json.JSONDecodeError):
    pass
  return {"name": member.name, **member.overrides, "status": status, "steps": done,
          "num_steps": num_steps, "bpt": last.get(EVAL_KEY), "bpt_stderr": last.get(STDERR_KEY),
          "best_bpt": min((r[EVAL_KEY] for r in evals), default=None), "wall_s": record.get("wall_s"),
          **quality, "curve": [(int(r["step"]), r[EVAL_KEY]) for r in evals]}


def setting_of(member: Member) -> str:
  """The name of a member's setting: its overrides without `seed`."""
  return ", ".join(f"{k}={v}" for k, v in member.overrides.items() if k != "seed") or "(base)"


def group_by_setting(members: list[Member], rows: list[dict]) -> list[dict]:
  """Per setting: mean, std (ddof 1; None for one seed) and count of the last validation bits per token of its
  members that have one; 'best' marks the lowest mean."""
  groups: dict[str, list[dict]] = {}
  for member, row in zip(members, rows):
    groups.setdefault(setting_of(member), []).append(row)
  out = []
  for setting, group in groups.items():
    values = np.array([r["bpt"] for r in group if r["bpt"] is not None], np.float64)
    out.append({"setting": setting, "seeds": len(group), "n": int(values.size),
                "mean": float(values.mean()) if values.size else None,
                "std": float(values.std(ddof=1)) if values.size > 1 else None,
                "curves": [r["curve"] for r in group if r["curve"]], "best": False})
  finite = [g for g in out if g["mean"] is not None]
  if finite:
    min(finite, key=lambda g: g["mean"])["best"] = True
  return out


def _fmt(value, digits: int = 4) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _columns(rows: list[dict], swept: list[str]) -> list[str]:
  fixed = ["name"] + swept + ["status", "steps", "num_steps", "bpt", "bpt_stderr", "best_bpt", "wall_s"]
  extra = sorted({k for r in rows for k in r} - set(fixed) - {"curve"})
  return fixed + extra


def markdown(title: str, rows: list[dict], groups: list[dict], columns: list[str]) -> str:
  lines = [f"# {title}", "", "bpt: the last validation bits per token (EMA parameters); best_bpt: the lowest "
           "logged; wall_s: the sweep's measured run time.", ""]
  cells = [[_fmt(r.get(c), 1 if c == "wall_s" else 4) for c in columns] for r in rows]
  lines += tables.markdown_lines(columns, cells)
  lines += ["", "## Settings (seeds grouped)", "",
            "| setting | mean bpt | std | n / seeds | |", "|---|---|---|---|---|"]
  lines += [f"| {g['setting']} | {_fmt(g['mean'])} | {_fmt(g['std'])} | {g['n']} / {g['seeds']} | "
            f"{'**best**' if g['best'] else ''} |" for g in groups]
  return "\n".join(lines) + "\n"


def plot(groups: list[dict], path: str, title: str) -> bool:
  """Validation curves, one line per setting (seed mean over the steps all its seeds logged, +- std band);
  False if matplotlib is missing or nothing was evaluated."""
  plt = tables.pyplot()
  drawable = []  # (group, the steps all its seeds logged)
  for g in groups:
    common = sorted(set.intersection(*[{s for s, _ in c} for c in g["curves"]])) if g["curves"] else []
    if common:
      drawable.append((g, common))
  if plt is None or not drawable:
    return False
  fig, ax = plt.subplots(figsize=(8, 5))
  for g, common in drawable:
    values = np.array([[dict(c)[s] for s in common] for c in g["curves"]])  # [seeds, steps]
    mean = values.mean(axis=0)
    line, = ax.plot(common, mean, marker="o", label=g["setting"] + (" (best)" if g["best"] else ""))
    if values.shape[0] > 1:
      std = values.std(axis=0, ddof=1)
      ax.fill_between(common, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  ax.set_xlabel("training step")
  ax.set_ylabel("validation bits per token")
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  atomic.write_figure(path, fig)
  return True


def write(root: str, members: list[Member], num_steps: dict[str, int], title: str) -> list[dict]:
  """Writes ROOT/report.{md,csv,png} (the png if matplotlib is there); returns the member rows."""
  rows = [member_row(root, m, num_steps[m.name]) for m in members]
  groups = group_by_setting(members, rows)
  columns = _columns(rows, list(dict.fromkeys(k for m in members for k in m.overrides)))
  atomic.write(os.path.join(root, "report.md"), markdown(title, rows, groups, columns))
  atomic.write(os.path.join(root, "report.csv"), tables.csv_text(rows, columns))
  plot(groups, os.path.join(root, "report.png"), title)
  return rows
