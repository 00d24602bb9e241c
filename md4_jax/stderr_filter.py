"""Drops one kind of noise from the process's stderr: TensorStore's 'Event loop is closed' tracebacks.

After a checkpoint write fails, Orbax closes its event loop while TensorStore still completes the other writes in
flight; each completion's callback into the closed loop prints a 5-line traceback straight from TensorStore's
threads (not through Python's logging, warnings or sys.excepthook): a full disk printed about 170 lines before
the run's one error line. The command-line entry points route file descriptor 2 through a pipe and a thread that
copies everything else unchanged, line by line.
"""

from __future__ import annotations

import os
import sys
import threading

CLOSED_LOOP = b"RuntimeError: Event loop is closed"


class ClosedLoopFilter:
  """Installed on creation; `close()` (before exiting) restores descriptor 2 and writes out what is pending."""

  def __init__(self):
    sys.stderr.flush()
    self._target = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    self._thread = threading.Thread(target=self._copy, args=(read,), name="stderr_filter", daemon=True)
    self._thread.start()

  def _copy(self, read: int) -> None:
    held = []  # the lines of a traceback, until its last line says what it was
    with os.fdopen(read, "rb") as pipe:
      for line in pipe:
        if not held and not line.startswith(b"Traceback (most recent call last):"):
          os.write(self._target, line)
          continue
        held.append(line)
        if line.startswith((b" ", b"\t", b"Traceback")):
          continue
        if line.rstrip() != CLOSED_LOOP:
          os.write(self._target, b"".join(held))
        held = []
    if held:
      os.write(self._target, b"".join(held))

  def close(self) -> None:
    sys.stderr.flush()
    os.dup2(self._target, 2)  # closes the pipe's last write end (children that inherited it aside): EOF
    self._thread.join(timeout=5)
