"""Atomic file writes: a reader (or a crash) never sees a partial file under the final name."""

from __future__ import annotations

import os


def write(path: str, data: str | bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same folder and an atomic rename."""
  temp = f"{path}.tmp{os.getpid()}"
  with open(temp, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temp, path)
