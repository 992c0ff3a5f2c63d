"""Files that a kill mid-write must never leave half written (reports, run settings), and
folders that one process at a time may write (report folders, training workdirs)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import pathlib
import socket
from typing import Iterator

from absl import logging

from pard_jax.errors import ConfigError

LOCK = ".lock"


def write_atomically(path: pathlib.Path, text: str) -> None:
  """Writes `text` beside `path` (as `.<name>.tmp`) and renames it over `path`."""
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  tmp.replace(path)


@contextlib.contextmanager
def locked(directory: pathlib.Path, field: str, job: str, other: str) -> Iterator[None]:
  """Holds `directory`'s lock while one `job` (a sweep, a training run) writes it; a second is
  refused, naming `field`, the owner and `other` (the setting to change instead).

  The lock is an `flock` on `<directory>/.lock`, which names its owner. The kernel drops it when
  its process ends, however it ends: a lock file left by a crashed job is taken over.
  """
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / LOCK
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = os.read(fd, 256).decode(errors="replace").strip() or "starting"
      os.close(fd)
      raise ConfigError(f"{field}: {directory} is in use by another {job} ({owner}; lock "
                        f"{path}); wait for it to end, or use another {other}") from None
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        break
    except FileNotFoundError:
      pass
    os.close(fd)  # its owner removed the file between our open and lock: lock the new one
  stale = os.read(fd, 256).decode(errors="replace").strip()
  if stale:
    logging.warning("%s: taking over the lock of a %s that ended without releasing it (%s)",
                    directory, job, stale)
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
  try:
    yield
  finally:
    os.unlink(path)
    os.close(fd)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
  del size, mtime_ns  # the cache key: a rewritten file is hashed again
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      digest.update(chunk)
  return digest.hexdigest()


def sha256(path: pathlib.Path) -> str:
  """The file's sha256 (cached per size and modification time)."""
  stat = path.stat()
  return _sha256(str(path), stat.st_size, stat.st_mtime_ns)
