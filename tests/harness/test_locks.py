"""The run-folder lock holds without flock (cluster filesystems that ignore it): one owner out of
racing processes, a dead owner taken over at once on its host, another host's owner by heartbeat."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.locks import FileLock, LockHeld
from harness.store import RunInUse, RunStore

ROOT = Path(__file__).resolve().parents[2]

RACER = """
import fcntl, sys, time
fcntl.flock = lambda *a, **k: None          # a filesystem that ignores flock: it always "succeeds"
from harness.store import RunInUse, RunStore
start = float(sys.argv[2])
while time.time() < start:
    pass
try:
    with RunStore(sys.argv[1]).exclusive():
        print("owner", flush=True)
        time.sleep(2.0)
except RunInUse:
    print("refused", flush=True)
"""


def test_racing_processes_without_flock_get_one_owner(tmp_path):
    start = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / "run"), str(start)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["owner", "refused", "refused", "refused"], outcomes
    assert not RunStore(tmp_path / "run").in_use()  # released at the end


def test_a_killed_owner_is_taken_over_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / "run"), "0"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "owner"
    assert RunStore(tmp_path / "run").in_use()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    store = RunStore(tmp_path / "run")
    assert not store.in_use()  # its pid is gone: no need to wait for the heartbeat to age
    with store.exclusive():
        assert store.in_use()


def write_owner(path: Path, host: str, age_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": 12345, "start": None, "token": "other"}))
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


def test_another_hosts_owner_holds_until_its_heartbeat_is_stale(tmp_path):
    lock = FileLock(tmp_path / ".owner", stale_s=60)
    write_owner(lock.path, "some-other-node", age_s=5)
    assert lock.held()
    with pytest.raises(LockHeld, match="some-other-node"):
        lock.acquire()
    write_owner(lock.path, "some-other-node", age_s=120)  # that node crashed: no heartbeat for 2 minutes
    assert not lock.held()
    with lock:
        assert json.loads(lock.path.read_text())["host"] == socket.gethostname()
    assert not lock.path.exists()


def test_the_heartbeat_keeps_a_held_lock_fresh(tmp_path):
    lock = FileLock(tmp_path / ".owner", stale_s=0.5, heartbeat_s=0.05)
    with lock:
        old = time.time() - 10
        os.utime(lock.path, (old, old))
        time.sleep(0.3)
        assert time.time() - lock.path.stat().st_mtime < 0.5
        assert FileLock(lock.path, stale_s=0.5).held()


def test_a_second_driver_in_this_process_is_refused(tmp_path):
    store = RunStore(tmp_path / "run")
    with store.exclusive():
        with pytest.raises(RunInUse, match="in use by another process"):
            with RunStore(tmp_path / "run").exclusive():
                pass
