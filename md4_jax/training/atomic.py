"""Atomic file writes: a reader (or a crash) never sees a partial file under the final name."""

from __future__ import annotations

import io
import os


def write(path: str, data: str | bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same folder and an atomic rename."""
  temp = f"{path}.tmp{os.getpid()}"
  with open(temp, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temp, path)


def write_figure(path: str, fig) -> None:
  """Saves the matplotlib figure `fig` as a PNG at `path` (atomically) and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  plt.close(fig)
  write(path, buffer.getvalue())
