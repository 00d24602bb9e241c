"""One run per workdir: WORKDIR/run.lock, taken before anything is written and held until the run ends.

The lock file holds its holder as JSON: host, pid, the process's start time, the run's start time and a random
token. A second run refuses at once with that holder named. A lock whose holder is gone does not block:

- holder on this host: its pid is not alive (or now belongs to another process, told by the process start time);
- holder on another host: the holder refreshes the file's mtime every HEARTBEAT_S seconds, so a file untouched for
  LEASE_S seconds belongs to a lost node (this compares the file system's mtime with this host's clock).

What it relies on from the file system: `open(O_CREAT | O_EXCL)` fails when the file exists (atomic on local file
systems and NFS v3+), `rename` and `utime`. A stale lock is moved aside under a unique name (`run.lock.stale-*`,
kept for inspection), and the mover checks it moved the stale holder's file, not a newer one. In a multi-process
run only process 0 takes the lock; the others learn its outcome by a broadcast and stop with it.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import socket
import threading
import time

FILENAME = "run.lock"
HEARTBEAT_S = 30.0
LEASE_S = 180.0


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


def _process_start(pid: int) -> str | None:
  """The start time of process `pid` in clock ticks since boot (Linux), None where unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, owned by another user
  now = _process_start(pid)
  return start is None or now is None or now == start  # the same pid reused by a later process: not the holder


def _read(path: str) -> dict | None:
  """The holder in the lock file at `path`, {} for an unreadable (partly written) file, None if there is no file."""
  try:
    with open(path) as f:
      text = f.read()
  except FileNotFoundError:
    return None
  try:
    holder = json.loads(text)
  except json.JSONDecodeError:
    return {}
  return holder if isinstance(holder, dict) else {}


def describe(holder: dict) -> str:
  if not holder:
    return "a lock file being written, or unreadable"
  started = datetime.datetime.fromtimestamp(holder.get("started", 0), datetime.timezone.utc)
  return (f"host {holder.get('host')!r}, pid {holder.get('pid')}, started "
          f"{started.strftime('%Y-%m-%d %H:%M:%S')} UTC")


class WorkdirLock:
  """The lock on `workdir`: `acquire()` (raises WorkdirLockedError naming the holder), `release()`."""

  def __init__(self, workdir: str, heartbeat_s: float = HEARTBEAT_S, lease_s: float = LEASE_S):
    self.path = os.path.join(workdir, FILENAME)
    self.heartbeat_s, self.lease_s = heartbeat_s, lease_s
    pid = os.getpid()
    self.holder = {"host": socket.gethostname(), "pid": pid, "process_start": _process_start(pid),
                   "started": time.time(), "token": secrets.token_hex(8)}
    self._stop = threading.Event()
    self._thread = None

  def _stale(self, holder: dict) -> bool:
    try:
      age = time.time() - os.stat(self.path).st_mtime
    except FileNotFoundError:
      return True
    if holder.get("host") == self.holder["host"] and isinstance(holder.get("pid"), int):
      return not _alive(holder["pid"], holder.get("process_start"))
    return age > self.lease_s  # another host (or an unreadable file): only the lease tells

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(json.dumps(self.holder) + "\n")
      f.flush()
      os.fsync(f.fileno())
    return (_read(self.path) or {}).get("token") == self.holder["token"]

  def _move_aside(self, stale: dict) -> None:
    """Moves the stale lock file aside; puts it back if it turned out to be a newer holder's."""
    aside = f"{self.path}.stale-{int(time.time())}-{secrets.token_hex(4)}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return  # another starter moved it first
    moved = _read(aside) or {}
    if stale and moved.get("token") != stale.get("token") and not os.path.exists(self.path):
      os.rename(aside, self.path)  # a run took the lock between our read and our rename: give it back

  def acquire(self) -> None:
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    for _ in range(3):
      if self._create():
        self._start_heartbeat()
        return
      holder = _read(self.path)
      if holder is None:
        continue  # released meanwhile
      if not self._stale(holder):
        raise WorkdirLockedError(
            f"workdir {os.path.dirname(self.path)} is in use by another run ({describe(holder)}); wait for it, "
            f"stop it, or use another --workdir (a lock of a dead run is ignored: {self.path})")
      print(f"workdir lock of a run that is gone ({describe(holder)}) moved aside", flush=True)
      self._move_aside(holder)
    raise WorkdirLockedError(f"could not take the workdir lock {self.path}: other runs keep taking it")

  def _start_heartbeat(self) -> None:
    def beat():
      while not self._stop.wait(self.heartbeat_s):
        try:
          os.utime(self.path)
        except OSError:
          pass  # a transient file-system error: the next beat tries again; the lease is several beats long
    self._thread = threading.Thread(target=beat, name="workdir_lock_heartbeat", daemon=True)
    self._thread.start()

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if (_read(self.path) or {}).get("token") == self.holder["token"]:
      os.remove(self.path)


def acquire_for_run(workdir: str) -> WorkdirLock | None:
  """Process 0 takes the lock of `workdir`; every process raises WorkdirLockedError if it could not.

  Returns the lock on process 0 (release it when the run ends), None on the others.
  """
  import jax  # pylint: disable=g-import-not-at-top
  lock, error = None, ""
  if jax.process_index() == 0:
    lock = WorkdirLock(workdir)
    try:
      lock.acquire()
    except (WorkdirLockedError, OSError) as e:
      lock, error = None, str(e)
  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    taken = bool(multihost_utils.broadcast_one_to_all(np.int32(not error)))
    if not taken and not error:
      error = f"process 0 could not take the workdir lock of {workdir} (its message names the holder)"
  if error:
    raise WorkdirLockedError(error)
  return lock
