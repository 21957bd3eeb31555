"""One process per role on a run dir: a second `distill rollout` (or train, or score) on the same
output_dir is refused, instead of paying the teacher twice for the same prompts and overwriting the
first one's shards or checkpoints.

The roles are the stages that may run side by side as separate processes on one run dir (docs/
architecture.md): the producer (rollout, replay) filling OUTPUT_DIR/samples, `distill score`, and
`distill train`. `distill run` holds every role it runs. Each role is an flock on
OUTPUT_DIR/.lock-ROLE: the kernel drops it when the process ends, kill -9 included, so a killed run
never leaves a stale lock behind. The file holds the holder's pid and command, for the message.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (distill runs on Linux and macOS)
    fcntl = None  # type: ignore[assignment]

ROLES = ("sample", "score", "train")


class RunDirBusy(Exception):
    """Another live process holds this run dir for the same role (a user error: named, with the fix)."""


#: (resolved run dir, role) -> (open fd holding the flock, the thread whose command took it)
_held: dict[tuple[str, str], tuple[int, int]] = {}


def lock_file(run_dir: Path, role: str) -> Path:
    """The file whose flock is `role` on run_dir."""
    return Path(run_dir) / f".lock-{role}"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
        return f"pid {int(info['pid'])} on {info.get('host', '?')}, `distill {info.get('command', '?')}`"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def lock_run_dir(run_dir: Path, roles: tuple[str, ...], command: str, label: str = "output_dir") -> None:
    """Take the flock of each role (of ROLES) on run_dir, or raise RunDirBusy naming the holder. A role
    this thread already holds is kept (commands called one after the other in one thread); one held by a
    command in another thread of this process is busy, as in another process."""
    if not set(roles) <= set(ROLES):
        raise ValueError(f"unknown run dir role(s) {sorted(set(roles) - set(ROLES))}; the roles are {ROLES}")
    if fcntl is None:
        return
    key_dir = str(Path(run_dir).resolve())
    me = threading.get_ident()
    for role in roles:
        if (key_dir, role) in _held:
            if _held[(key_dir, role)][1] != me:  # a command in another thread of this process: as busy
                raise RunDirBusy(
                    f"output_dir {run_dir} is in use by another distill command of this process (in another "
                    "thread). Fix: wait for it to end, or give this run another output_dir"
                )
            continue
        path = lock_file(run_dir, role)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirBusy(_busy(run_dir, path, label)) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _held[(key_dir, role)] = (fd, me)


def _busy(run_dir: Path, path: Path, label: str = "output_dir") -> str:
    return (
        f"{label} {run_dir} is in use: {_holder(path)} is running there (it holds {path.name}). "
        f"Fix: wait for it to end (or stop it; rerunning then resumes), or give this run another "
        f"{label} (--{label} DIR)"
    )


def check_free(run_dir: Path, roles: tuple[str, ...]) -> None:
    """Raise RunDirBusy, as lock_run_dir would, when another live process holds one of `roles` on
    run_dir; takes nothing and creates nothing. Commands call it before their other checks, so that a
    second run on a busy dir is told that first (not, say, that the dir holds another run's checkpoints)."""
    key_dir = str(Path(run_dir).resolve())
    for role in roles:
        if (key_dir, role) not in _held and held_elsewhere(run_dir, role):  # this process: lock_run_dir decides
            raise RunDirBusy(_busy(run_dir, lock_file(run_dir, role)))


def held_elsewhere(run_dir: Path, role: str) -> bool:
    """Whether a live process other than this one holds `role` on run_dir (False where it cannot tell)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(lock_file(run_dir, role), os.O_RDONLY)
    except OSError:  # no lock file (no run there yet) or unreadable
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while a holder has its LOCK_EX
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # drops the shared lock, if taken


def release_all() -> None:
    """Drop every lock the calling thread's commands took (the end of a command run in-process)."""
    me = threading.get_ident()
    for key, (fd, owner) in list(_held.items()):
        if owner != me:
            continue
        del _held[key]
        try:
            os.close(fd)  # closing the only descriptor releases the flock
        except OSError:
            pass
