"""One run per workdir: a second run refuses at once naming the first; stale locks (dead
pid on this host, an unrefreshed lock from another host) are taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from mmgen_jax import workdir_lock
from mmgen_jax.workdir_lock import LOCK_FILE, WorkdirLock, WorkdirLocked

_HOLD = """
import sys, time
from mmgen_jax.workdir_lock import WorkdirLock
with WorkdirLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_run_refuses_naming_the_first(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirLocked) as refused, WorkdirLock(str(tmp_path)):
            pass
        message = str(refused.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in message
        assert str(tmp_path / LOCK_FILE) in message and "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    # Killed without releasing: the lock is stale and the next run takes it over.
    with WorkdirLock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def _write_lock(path, **holder):
    (path / LOCK_FILE).write_text(json.dumps(holder))


def test_released_on_error_and_not_taken_when_disabled(tmp_path):
    with pytest.raises(KeyError), WorkdirLock(str(tmp_path)):
        assert (tmp_path / LOCK_FILE).exists()
        raise KeyError("boom")
    assert not (tmp_path / LOCK_FILE).exists()
    with WorkdirLock(str(tmp_path), enabled=False):  # processes other than 0
        assert not (tmp_path / LOCK_FILE).exists()


def test_a_reused_pid_does_not_hold_the_lock(tmp_path, caplog):
    # Our own pid is alive, but the recorded process start differs: a newer process.
    _write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid(), process_start=1)
    with WorkdirLock(str(tmp_path)):
        pass
    assert "is now another process" in caplog.text


def test_another_hosts_lock_holds_until_it_stops_being_refreshed(tmp_path, caplog):
    _write_lock(tmp_path, host="node-7", pid=4242, started="2026-01-01T00:00:00+00:00")
    with pytest.raises(WorkdirLocked, match="pid 4242 on node-7"), WorkdirLock(str(tmp_path)):
        pass
    old = time.time() - 3600
    os.utime(tmp_path / LOCK_FILE, (old, old))
    with WorkdirLock(str(tmp_path), stale_after=600):
        pass
    assert "not refreshed by node-7 for 3600 s" in caplog.text


def test_the_holder_refreshes_its_lock(tmp_path):
    with WorkdirLock(str(tmp_path), heartbeat=0.05):
        old = time.time() - 3600
        os.utime(tmp_path / LOCK_FILE, (old, old))
        time.sleep(0.5)
        assert time.time() - os.stat(tmp_path / LOCK_FILE).st_mtime < 5


def test_a_fresh_lock_is_put_back_by_a_late_breaker(tmp_path):
    _write_lock(tmp_path, host="node-7", pid=1)
    fresh = (tmp_path / LOCK_FILE).read_text()
    # A run that judged an older content stale must not remove the lock now there.
    WorkdirLock(str(tmp_path))._break("an older stale content")
    assert (tmp_path / LOCK_FILE).read_text() == fresh
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]


def test_process_start_reads_this_process():
    assert workdir_lock._process_start(os.getpid()) == workdir_lock._process_start(os.getpid())
    assert workdir_lock._process_start(os.getpid()) is not None
