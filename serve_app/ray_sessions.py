"""Old Ray session directories, deleted.

Ray rotates its log files within a run (``RAY_ROTATION_*``, serve_app.runtime), but leaves each
finished run's session directory (``<ray temp dir>/session_<date>_<pid>``: logs, sockets,
runtime environments) forever. ``neuroapi serve``, when it starts its own local Ray, first deletes
those past ``log_retention_days`` (config.settings) that no live process uses.

A directory goes only when all of these hold:
- its name is one Ray gives a session (``session_YYYY-MM-DD_HH-MM-SS_<microseconds>_<pid>``);
- it is a real directory, not a symlink, and not where ``session_latest`` points;
- its last change (the newest mtime of the directory, its ``logs/`` folder and what lies directly
  in that folder) is older than the window;
- no running process names it on its command line. Ray's processes are started with the session
  directory as an argument (ray._private.services: the raylet ``--session_dir=``; the GCS server,
  the log monitor, the dashboard and runtime-env agents ``--session-dir=``; C++ workers
  ``--ray_session_dir=``; log paths inside it),
  so a session any live Ray on this machine still uses is never touched. Where there is no
  ``/proc`` to ask, every session counts as in use: nothing is deleted.

Errors (permissions, another process deleting at the same time) skip the directory; nothing is
raised."""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

SESSION_NAME = re.compile(r"session_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d{6}_\d+")
SESSION_LATEST = "session_latest"
PROC = Path("/proc")

# A session's name inside an argument: not part of a longer name (``..._12`` in ``..._123``).
_NAME_CHARS = re.compile(r"[\w.-]")


def command_lines(proc: Path | None = None) -> list[list[str]] | None:
    """Every readable process's arguments; None where there is no /proc to read."""
    proc = PROC if proc is None else proc
    try:
        with os.scandir(proc) as found:
            entries = list(found)
    except OSError:
        return None
    if not (proc / "self" / "cmdline").exists():
        return None
    lines = []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if raw:
            lines.append([arg for arg in raw.decode("utf-8", "replace").split("\0") if arg])
    return lines


def names_session(args: Iterable[str], session_name: str) -> bool:
    """Whether one of these arguments names that session directory (or a path inside it)."""
    for arg in args:
        start = arg.find(session_name)
        while start != -1:
            end = start + len(session_name)
            before_ok = start == 0 or not _NAME_CHARS.match(arg[start - 1])
            after_ok = end == len(arg) or not _NAME_CHARS.match(arg[end])
            if before_ok and after_ok:
                return True
            start = arg.find(session_name, start + 1)
    return False


def session_in_use(session_dir: Path, lines: list[list[str]] | None = None) -> bool:
    """Whether a running process names this session directory on its command line (by its name,
    which holds a timestamp and a pid: matching the name rather than the full path also catches a
    process given the temp dir through another path, a symlink or a relative one). True where
    there is no /proc to read: then nothing is known to be idle."""
    if lines is None:
        lines = command_lines()
    if lines is None:
        return True
    return any(names_session(args, session_dir.name) for args in lines)


def last_change(session_dir: Path) -> float:
    """The newest mtime of the directory, its ``logs/`` folder and the entries directly in it
    (log files are appended to without changing their folder's mtime)."""
    newest = session_dir.lstat().st_mtime
    logs = session_dir / "logs"
    try:
        newest = max(newest, logs.lstat().st_mtime)
        with os.scandir(logs) as entries:
            for entry in entries:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    continue
    except OSError:  # no logs/ folder (or not readable): the directory's own mtime
        pass
    return newest


def _latest_target(temp_dir: Path) -> Path | None:
    latest = temp_dir / SESSION_LATEST
    try:
        if latest.is_symlink():
            return latest.resolve()
    except (OSError, RuntimeError):
        pass
    return None


def prune_ray_sessions(temp_dir: Path, older_than_s: float, now: float | None = None,
                       running: Callable[[Path], bool] = session_in_use) -> list[Path]:
    """Delete the finished Ray session directories under ``temp_dir`` unchanged for more than
    ``older_than_s`` seconds (module docstring: which ones, exactly). Returns those deleted."""
    now = time.time() if now is None else now
    temp_dir = Path(temp_dir)
    try:
        with os.scandir(temp_dir) as found:
            entries = sorted(found, key=lambda entry: entry.name)
    except OSError:  # no temp dir yet (Ray never ran here), or not ours to read
        return []
    latest = _latest_target(temp_dir)
    candidates = []
    for entry in entries:
        if not SESSION_NAME.fullmatch(entry.name):
            continue
        path = Path(entry.path)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):  # a symlink or a file: never
                continue
            if latest is not None and path.resolve() == latest:
                continue
            if now - last_change(path) <= older_than_s:
                continue
        except (OSError, RuntimeError):
            continue
        candidates.append(path)
    if not candidates:
        return []
    if running is session_in_use:  # one look at the processes for all of them
        lines = command_lines()
        running = lambda session_dir: session_in_use(session_dir, lines)  # noqa: E731
    deleted = []
    for path in candidates:
        try:
            if running(path):
                continue
        except Exception:  # a check that fails knows nothing: keep the session
            continue
        shutil.rmtree(path, ignore_errors=True)  # refuses a symlink swapped in meanwhile
        if not os.path.lexists(path):
            deleted.append(path)
    return deleted

