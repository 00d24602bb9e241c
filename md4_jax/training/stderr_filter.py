"""Drops one kind of noise from the process's stderr: TensorStore's 'Event loop is closed' tracebacks.

After a checkpoint write fails, Orbax closes its event loop while TensorStore still completes the other writes in
flight; each completion's callback into the closed loop prints a 5-line traceback straight from TensorStore's
threads (not through Python's logging, warnings or sys.excepthook): a full disk printed about 170 lines before
the run's one error line. The command-line entry points route file descriptor 2 through a pipe and a thread that
copies everything else unchanged, line by line (their lines interleave, as several threads print at once, so they
are recognised one by one).
"""

from __future__ import annotations

import os
import re
import sys
import threading

HEADER = b"Traceback (most recent call last):"
# The pieces of those tracebacks, as Python writes them (the last line in three writes: 'RuntimeError', ': ', the
# message). Several threads print at once, so their lines interleave, even within a line ("RuntimeError:     raise
# RuntimeError('Event loop is closed')", ": Event loop is closed"): a line made only of these pieces is noise.
_PIECES = re.compile(
    rb"Traceback \(most recent call last\):|self\._check_closed\(\)|raise RuntimeError\('Event loop is closed'\)"
    rb"|RuntimeError|:|Event loop is closed"
    rb"|File \"[^\"]*asyncio[^\"]*\", line \d+, in (?:call_soon_threadsafe|_check_closed)")


def is_noise(line: bytes) -> bool:
  """True for a line made only of pieces of those tracebacks (or blank); a lone traceback header is not noise
  (the filter holds it until the next line says whose traceback it starts: a `File "..."` line other than
  asyncio's keeps it, anything else drops it)."""
  line = line.strip()
  return line != HEADER and not _PIECES.sub(b"", line).strip()


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
    header = None  # a traceback header, held until the next line tells whose traceback it starts
    with os.fdopen(read, "rb") as pipe:
      for line in pipe:
        if is_noise(line):
          header = None
          continue
        if header is not None and line.lstrip().startswith(b"File \""):  # a traceback of its own: keep both
          os.write(self._target, header)
        header = None
        if line.strip() == HEADER:
          header = line
        else:
          os.write(self._target, line)
    if header is not None:
      os.write(self._target, header)

  def close(self, discard_rest: bool = False) -> None:
    """Writes out what is pending and gives descriptor 2 back; `discard_rest`: to /dev/null instead (at a
    failure exit, where TensorStore's threads may still be printing)."""
    sys.stderr.flush()
    if discard_rest:
      null = os.open(os.devnull, os.O_WRONLY)
      os.dup2(null, 2)  # closes the pipe's last write end (children that inherited it aside): EOF
      os.close(null)
    else:
      os.dup2(self._target, 2)
    self._thread.join(timeout=5)
