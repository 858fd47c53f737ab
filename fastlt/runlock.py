"""One writer per run directory: ``<run>/run.lock`` while a training or an evaluation writes the run.

The lock file is created with ``O_CREAT | O_EXCL`` — atomic: of two processes that try at once, exactly one
creates it — and holds its writer as JSON: command, PID, host, the PID's start time (``/proc``) and when it
started. A second writer is refused with the holder named. A lock whose holder is dead is taken over, and the
taker says so: dead means the same host and a PID that no longer runs, or that now runs a process started at
another time (a reused PID). A lock from another host cannot be checked from here and is never taken over;
the message names the file to delete once that process is known to be gone.

Stdlib only: training and evaluation take the lock before anything heavy is built.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "run.lock"
TAKEOVER_ATTEMPTS = 3  # create → find a dead holder's lock → move it aside → create again


class RunLockError(RuntimeError):
    """The run directory is held by another live writer, or the lock file cannot be made."""


def _process_start(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot: field 22 of ``/proc/<pid>/stat``); None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count fields after its last ")".
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a signal-0 probe)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def describe(holder: dict) -> str:
    """``fastlt train (pid 123 on host h, since 2025-01-01 12:00:00)``."""
    return (
        f"{holder.get('command', 'a fastlt process')} (pid {holder.get('pid')} on host {holder.get('host')}, "
        f"since {holder.get('started', '?')})"
    )


def holder_is_dead(holder: dict) -> bool:
    """True only when it is certain: same host, and the PID is gone or now belongs to a later process."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    pid = holder["pid"]
    if not pid_alive(pid):
        return True
    start = _process_start(pid)
    return start is not None and holder.get("pid_start") is not None and start != holder["pid_start"]


def read_holder(path: Path) -> dict | None:
    """The lock's holder record; ``{}`` for a file that names none (being written, or damaged); None when
    there is no lock file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    with contextlib.suppress(ValueError):
        holder = json.loads(text)
        if isinstance(holder, dict):
            return holder
    return {}


@dataclass
class RunLock:
    """A held lock; :meth:`release` removes the file (only while it is still this process's)."""

    path: Path
    holder: dict

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike, command: str, say=print) -> RunLock:
        """Lock ``run_dir`` (which must exist) for ``command``, or raise :class:`RunLockError` naming the
        holder. ``say`` reports a takeover of a dead holder's lock."""
        path = Path(run_dir) / LOCK_NAME
        me = {
            "command": command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "pid_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for _ in range(TAKEOVER_ATTEMPTS):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(path)
                if holder is None:  # released between our attempt and the read: try again
                    continue
                _refuse_unless_dead(path, holder, run_dir)
                if _move_aside(path, holder):
                    say(f"{run_dir}: took over {LOCK_NAME} from {describe(holder)}: no longer running")
                continue
            except OSError as e:
                raise RunLockError(f"cannot create {path}: {e.strerror}") from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            return cls(path, me)
        raise RunLockError(f"cannot lock {run_dir}: other processes keep taking {path}")

    def release(self) -> None:
        # After a takeover by someone else (only possible had this process looked dead) the file is theirs.
        if read_holder(self.path) == self.holder:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _refuse_unless_dead(path: Path, holder: dict, run_dir) -> None:
    if not holder:
        raise RunLockError(
            f"{run_dir} is locked by {path}, which names no holder (being written this instant, or damaged); "
            f"if no fastlt process is writing this run, delete {path}"
        )
    if holder_is_dead(holder):
        return
    if holder.get("host") != socket.gethostname():
        raise RunLockError(
            f"{run_dir} is in use by {describe(holder)}; that host cannot be checked from here. If that "
            f"process is gone, delete {path}"
        )
    raise RunLockError(f"{run_dir} is in use by {describe(holder)}")


def _move_aside(path: Path, stale: dict) -> bool:
    """Remove a dead holder's lock so that two processes taking it over at once cannot both succeed: the lock
    is renamed first (only one rename of it can succeed) and checked to be the one judged dead."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another process moved it first
        return False
    if read_holder(aside) != stale:  # it had been taken over already: put the live lock back
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink()
        return False
    aside.unlink()
    return True
