"""A lock that holds on shared filesystems too: an owner file created atomically, kept alive by a
heartbeat, taken over when its owner is gone.

``fcntl.flock`` is ignored or emulated on some cluster filesystems (Lustre mounted without
``flock``, some NFS setups), where two drivers or an orphaned worker could then train one cell
twice. This lock uses only operations those filesystems make atomic: ``O_CREAT | O_EXCL`` to create
the owner file and ``rename`` to take over a dead owner's. The owner file records host, pid and the
process's start time; its modification time is the heartbeat, refreshed every ``HEARTBEAT_S`` by a
thread while the lock is held. An owner is gone when, on this host, its process no longer exists
(found at once), or, from any host, its heartbeat is older than ``STALE_S`` (a crashed node).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

HEARTBEAT_S = 10.0
STALE_S = 60.0


class LockHeld(RuntimeError):
    """Another live process holds the lock."""


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): with the pid, it names one process even when
    pids are reused. None where /proc is not available."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()),
            "token": uuid.uuid4().hex}


class FileLock:
    def __init__(self, path, stale_s: float = STALE_S, heartbeat_s: float = HEARTBEAT_S):
        self.path = Path(path)
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self._owner: dict | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- who holds it -----------------------------------------------------------------------------
    def owner(self) -> dict | None:
        """The current owner record, or None when the lock is free (no file, or a dead owner's)."""
        record = self._record()
        return None if record is None or record.get("gone") else record

    def _record(self) -> dict | None:
        try:
            age = time.time() - self.path.stat().st_mtime
            record = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # created, not yet filled: held, unless its writer died long ago
            return {"host": "?", "pid": -1, "gone": age > self.stale_s}
        return {**record, "gone": self._gone(record, age)}

    def held(self) -> bool:
        return self.owner() is not None

    def _gone(self, record: dict, age: float) -> bool:
        if age > self.stale_s:
            return True
        if record.get("host") == socket.gethostname():
            pid = record.get("pid", -1)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:  # alive, another user's
                return False
            return record.get("start") is not None and _start_time(pid) not in (None, record["start"])
        return False

    # -- taking and giving it -----------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lock or raise LockHeld at once (never waits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = _me()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._record()
                if holder is not None and not holder["gone"]:
                    raise LockHeld(f"held by pid {holder.get('pid')} on {holder.get('host')}") from None
                if holder is not None:
                    self._evict(holder.get("token"))
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            if json.loads(self.path.read_text()).get("token") != me["token"]:  # lost a race on a slow filesystem
                raise LockHeld("taken by another process at the same moment")
            self._owner = me
            self._stop.clear()
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
            return
        raise LockHeld("could not take over a stale lock (another process keeps taking it)")

    def acquire_blocking(self, poll_s: float = 0.5) -> None:
        """Wait until the lock is free, then take it."""
        while True:
            try:
                return self.acquire()
            except LockHeld:
                time.sleep(poll_s)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.path.read_text()).get("token") == self._owner["token"]:
                self.path.unlink()
        self._owner = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def _evict(self, stale_token) -> None:
        """Move a dead owner's file aside (rename is atomic: of two processes evicting it, one wins).
        If what was moved is not the dead owner's (another process took the lock in between), it is
        put back."""
        aside = self.path.with_name(f"{self.path.name}.stale.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        with contextlib.suppress(OSError, ValueError):
            if json.loads(aside.read_text()).get("token") != stale_token:
                os.rename(aside, self.path)
                return
        with contextlib.suppress(OSError):
            aside.unlink()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(OSError):
                os.utime(self.path)
