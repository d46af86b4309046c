"""One run at a time in a workdir: a lock file naming its holder.

    with WorkdirLock(workdir, enabled=jax.process_index() == 0):
        ...  # train

`<workdir>/run.lock` is created with O_CREAT | O_EXCL, atomic on a local disk and on NFS
(v3 and later) or a cluster filesystem, so two runs on one machine or on two machines that
share the workdir cannot both take it. It holds JSON: host, pid, the process's start time,
when the run started and its command line. A second run refuses at once, naming them.

A lock left behind by a run that died without releasing it (kill -9, a crashed host) is
stale and taken over, with a warning:
- same host: its pid is no longer running (or is a newer process reusing that pid);
- another host: its holder refreshes the file's mtime every `heartbeat` seconds, so a lock
  untouched for `stale_after` seconds (default 10 minutes) is stale. Its holder cannot be
  asked directly; to take over sooner, remove the file (the refusal names it).
Only process 0 of a multi-process run takes the lock: the processes of one run share it.
"""

import datetime
import json
import logging
import os
import socket
import sys
import threading
import time

log = logging.getLogger("mmgen_jax")

LOCK_FILE = "run.lock"


class WorkdirLocked(RuntimeError):
    """Another run holds the workdir."""


def _process_start(pid):
    """The process's start time in clock ticks since boot (Linux), or None: tells a live
    process from a newer one that reuses a dead one's pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            # The command name (field 2) may hold spaces; fields after its ')' are plain.
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


class WorkdirLock:
    """Context manager holding `<workdir>/run.lock` (see the module docstring)."""

    def __init__(self, workdir, enabled=True, stale_after=600.0, heartbeat=60.0):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
        self.enabled = enabled
        self.stale_after, self.heartbeat = stale_after, heartbeat
        self._stop = threading.Event()
        self._thread = None
        self._mine = None

    def __enter__(self):
        if self.enabled:
            self._acquire()
            self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if not self.enabled or self._mine is None:
            return
        self._stop.set()
        self._thread.join()
        if self._read()[0] == self._mine:  # never remove a lock another run took over
            os.remove(self.path)
        self._mine = None

    def _acquire(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        text = json.dumps(me, sort_keys=True)
        for _ in range(5):  # each pass either takes the lock, refuses, or removes a stale one
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                text_found, holder = self._read()
                if text_found is None:
                    continue  # released between our open and read
                stale = self._stale(holder)
                if stale is None:
                    raise WorkdirLocked(self._refusal(holder)) from None
                log.warning("%s: taking over a stale lock (%s).", self.path, stale)
                self._break(text_found)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            self._mine = text
            return
        raise WorkdirLocked(f"{self.path} keeps changing hands: another run is starting here")

    def _read(self):
        """(the lock file's text, its JSON as a dict or {}); (None, None) if there is none."""
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None, None
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            holder = None  # being written right now, or garbage
        return text, holder if isinstance(holder, dict) else {}

    def _age(self):
        try:
            return time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return 0.0

    def _stale(self, holder):
        """Why the lock `holder` wrote is stale, or None if it may still be held."""
        host, pid = holder.get("host"), holder.get("pid")
        if host == socket.gethostname() and isinstance(pid, int):
            if not _running(pid):
                return f"pid {pid} on {host} is no longer running"
            started = holder.get("process_start")
            if started is not None and started != _process_start(pid):
                return f"pid {pid} on {host} is now another process"
            return None
        age = self._age()
        if age > self.stale_after:
            return f"not refreshed by {host or 'its holder'} for {age:.0f} s"
        return None

    def _refusal(self, holder):
        if not holder:
            who = "another run (its lock file is being written or unreadable)"
        else:
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')}, started "
                f"{holder.get('started')} ({holder.get('command')})"
            )
        remote = holder and holder.get("host") != socket.gethostname()
        wait = (
            f"; a lock from another host not refreshed for {self.stale_after:.0f} s is taken over"
            if remote or not holder
            else ""
        )
        return (
            f"{os.path.dirname(self.path)} is in use by {who}. Wait for that run to end or "
            f"stop it, or use another --workdir. If it is not running any more, remove "
            f"{self.path} and rerun{wait}."
        )

    def _break(self, stale_text):
        """Removes the lock file if it still holds `stale_text`. The rename is atomic, so of
        several runs breaking one stale lock only one removes it; one that finds a fresh lock
        renamed puts it back."""
        aside = f"{self.path}.stale.{socket.gethostname()}.{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        with open(aside, encoding="utf-8") as f:
            taken = f.read()
        if taken != stale_text:
            try:
                os.link(aside, self.path)  # fails if yet another run took the lock since
            except FileExistsError:
                pass
        os.remove(aside)

    def _beat(self):
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return  # removed by hand: the user took the workdir back
