"""What the report writers (scaling_report, sweeps.sweep_report, molecules) share: rows as a markdown table or as
CSV text, and matplotlib's pyplot for their figures."""

from __future__ import annotations

import csv
import io
from typing import Iterable, Sequence


def markdown_lines(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
  """The lines of a markdown table: the header, the separator and one line per row of cell strings."""
  lines = ["| " + " | ".join(cells) + " |" for cells in [header, *rows]]
  return lines[:1] + ["|" + "---|" * len(header)] + lines[1:]


def csv_text(rows: Iterable[dict], columns: Sequence[str], lineterminator: str = "\n") -> str:
  """`rows` as CSV with a header line: the values of `columns` (other keys ignored, None written as '')."""
  out = io.StringIO()
  writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator=lineterminator)
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue()


def pyplot():
  """matplotlib.pyplot on the Agg backend (files, no display), or None if matplotlib is not installed."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return plt
