"""One trainer per run directory: ``RUN/train.lock``, held by ``glam train`` from start to exit.

Two trainers on one run directory would interleave checkpoints and metrics (and one of them would
die in Orbax's rename). The lock is a file created exclusively, holding the owner's pid, host and
start time, and ``flock``-ed while its owner lives:

- a second trainer finds the file and the ``flock`` taken: one line naming the holder;
- a trainer killed without cleaning up (SIGKILL, OOM) leaves the file behind. If it names a process
  on this host that no longer runs, the next trainer takes the lock over and says so. A lock of
  another host cannot be checked from here: the message names it and the file to remove;
- the lock is released (the file removed) when training ends, also through an error; if taking it
  created the run directory and nothing else was written, the directory goes too, so a run that fails
  its checks leaves no trace.

In a multi-process job every process shares the run directory; process 0 alone takes the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from glam.errors import GLaMError

LOCK_FILE = "train.lock"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _describe(owner: dict) -> str:
    if "pid" not in owner:
        return "its lock file is being written"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"pid {owner.get('pid')} on host {owner.get('host')!r}, since {since}"


class RunLock:
    """``with RunLock(run_dir):`` holds the run directory's lock for the block (see module docstring)."""

    def __init__(self, run_dir: str, *, enabled: bool = True, log=print, busy_advice: str = ""):
        self.run_dir = os.path.abspath(run_dir)
        # what to do when a live trainer holds it (glam upcycle reads a run it does not train)
        self.busy_advice = busy_advice or "wait for it to finish or stop it, or train into another --run-dir"
        self.path = os.path.join(self.run_dir, LOCK_FILE)
        self.enabled = enabled
        self.log = log
        self._fd: int | None = None
        self._created_dir = False

    def __enter__(self) -> RunLock:
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if os.path.exists(self.run_dir) and not os.path.isdir(self.run_dir):
            raise GLaMError(f"--run-dir {self.run_dir!r} is a file, not a directory; choose another --run-dir")
        self._created_dir = not os.path.exists(self.run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._read(fd) or {}
                os.close(fd)
                self._remove_created_dir()
                raise GLaMError(
                    f"run directory {self.run_dir!r} is in use by another glam train ({_describe(owner)}); "
                    f"{self.busy_advice}"
                ) from None
            except OSError:  # a file system without flock: the pid check below still applies
                pass
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:  # not a file its previous owner removed while we waited for it
                break
            os.close(fd)
        owner = self._read(fd)
        if owner is None:  # torn by an owner killed while writing it (the flock is free): take it over
            self.log(f"taking over an unreadable lock file {self.path} (its writer was killed)")
        elif owner:
            self._check_stale(fd, owner)
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _check_stale(self, fd: int, owner: dict) -> None:
        """A lock file left behind: take it over if its owner is gone, else refuse."""
        here = socket.gethostname()
        if owner.get("host") == here and isinstance(owner.get("pid"), int) and not _running(owner["pid"]):
            self.log(f"taking over the lock of a glam train that is no longer running ({_describe(owner)})")
            return
        os.close(fd)
        if owner.get("host") == here:
            why = "it is still running"
        else:
            why = f"it cannot be checked from host {here!r}; if that process has ended, remove {self.path}"
        advice = "or train into another --run-dir" if "--run-dir" in self.busy_advice else self.busy_advice
        raise GLaMError(
            f"run directory {self.run_dir!r} is in use by another glam train ({_describe(owner)}): {why}; {advice}"
        )

    @staticmethod
    def _read(fd: int) -> dict | None:
        """The owner recorded in the file: {} if it is empty (just created), None if unreadable."""
        try:
            owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
        except json.JSONDecodeError:
            return None
        return owner if isinstance(owner, dict) else None

    def release(self) -> None:
        """Remove the lock file (still holding the flock, so no one takes a file about to vanish)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:  # gone already, or a run directory made read-only: the next trainer takes it over
            pass
        os.close(self._fd)
        self._fd = None
        self._remove_created_dir()

    def _remove_created_dir(self) -> None:
        if self._created_dir:
            try:
                os.rmdir(self.run_dir)  # only if empty: a failed start leaves no run directory
            except OSError:
                pass
            self._created_dir = False
