"""Old Ray session directories are deleted (serve_app.ray_sessions): only well-named, real,
idle ones past the window; never the current one, a symlink, or anything else in the temp dir."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_app import ray_sessions
from serve_app.ray_sessions import names_session, prune_ray_sessions, session_in_use

DAY = 86400.0
NOW = 1_800_000_000.0


def session(temp_dir: Path, name: str, age_days: float, logs: bool = True) -> Path:
    """A fake session directory last changed ``age_days`` before NOW."""
    path = temp_dir / name
    path.mkdir(parents=True)
    if logs:
        (path / "logs").mkdir()
        (path / "logs" / "raylet.out").write_text("a log line\n")
    stamp = NOW - age_days * DAY
    for item in ([path / "logs" / "raylet.out", path / "logs"] if logs else []) + [path]:
        os.utime(item, (stamp, stamp))
    return path


def name(n: int) -> str:
    return f"session_2024-01-0{n}_10-20-30_123456_{4000 + n}"


def never_running(_: Path) -> bool:
    return False


def test_only_old_idle_well_named_sessions_go(tmp_path):
    old = session(tmp_path, name(1), 30)
    old_without_logs = session(tmp_path, name(2), 30, logs=False)
    new = session(tmp_path, name(3), 1)
    busy = session(tmp_path, name(4), 30)
    latest = session(tmp_path, name(5), 30)
    (tmp_path / "session_latest").symlink_to(latest.name)
    stranger = session(tmp_path, "session_mine", 30)
    near_miss = session(tmp_path, name(6) + "_copy", 30)
    link = tmp_path / name(7)
    link.symlink_to(session(tmp_path, "elsewhere", 30))
    a_file = tmp_path / name(8)
    a_file.write_text("not a directory")
    os.utime(a_file, (NOW - 30 * DAY, NOW - 30 * DAY))

    deleted = prune_ray_sessions(tmp_path, 14 * DAY, now=NOW, running=lambda path: path.name == busy.name)

    assert sorted(deleted) == sorted([old, old_without_logs])
    assert not old.exists() and not old_without_logs.exists()
    for kept in (new, busy, latest, stranger, near_miss, a_file):
        assert kept.exists(), kept
    assert link.is_symlink() and (tmp_path / "elsewhere" / "logs" / "raylet.out").exists()
    assert (tmp_path / "session_latest").is_symlink()


def test_a_recent_log_file_keeps_an_old_directory(tmp_path):
    """Appending to a log does not change its folder's mtime: the files' own times count too."""
    path = session(tmp_path, name(1), 30)
    recent = NOW - DAY
    os.utime(path / "logs" / "raylet.out", (recent, recent))
    assert prune_ray_sessions(tmp_path, 14 * DAY, now=NOW, running=never_running) == []
    assert path.exists()


def test_the_window_is_strict_and_nothing_is_asked_without_candidates(tmp_path):
    session(tmp_path, name(1), 14)
    asked = []
    assert prune_ray_sessions(tmp_path, 14 * DAY, now=NOW, running=lambda p: asked.append(p)) == []
    assert asked == []


def test_a_missing_temp_dir_and_a_failing_check_delete_nothing(tmp_path):
    assert prune_ray_sessions(tmp_path / "absent", DAY, now=NOW) == []
    path = session(tmp_path, name(1), 30)

    def broken(_: Path) -> bool:
        raise PermissionError("no")

    assert prune_ray_sessions(tmp_path, DAY, now=NOW, running=broken) == []
    assert path.exists()


def test_a_session_it_could_not_delete_is_not_reported(tmp_path, monkeypatch):
    """A permission error inside one (rmtree's errors are ignored) leaves it, unreported."""
    locked = session(tmp_path, name(1), 30)
    free = session(tmp_path, name(2), 30)
    real_rmtree = ray_sessions.shutil.rmtree

    def rmtree(path, ignore_errors=False):
        assert ignore_errors
        if Path(path) != locked:
            real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(ray_sessions.shutil, "rmtree", rmtree)
    assert prune_ray_sessions(tmp_path, DAY, now=NOW, running=never_running) == [free]
    assert locked.exists()


def test_the_names_ray_passes_its_processes_count():
    """The raylet gets ``--session_dir=``, the GCS server and the agents ``--session-dir=``, C++
    workers ``--ray_session_dir=`` (ray._private.services); log paths lie inside it."""
    target = name(1)
    for arg in (f"--session_dir=/tmp/ray/{target}", f"--session-dir=/tmp/ray/{target}",
                f"--ray_session_dir=/tmp/ray/{target}", f"--log_dir=/tmp/ray/{target}/logs",
                f"/tmp/ray/{target}", target):
        assert names_session([arg], target), arg
    for arg in (f"--session_dir=/tmp/ray/{target}7", f"/tmp/ray/x{target}", "--session_dir=/tmp/ray/other"):
        assert not names_session([arg], target), arg


def test_the_ray_services_flags_are_still_the_ones_we_match():
    import inspect

    from ray._private import services

    source = inspect.getsource(services)
    assert "--session_dir={session_dir}" in source and "--session-dir={session_dir}" in source


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_a_session_a_live_process_names_is_kept(tmp_path):
    in_use = session(tmp_path, name(1), 30)
    idle = session(tmp_path, name(2), 30)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", f"--session-dir={in_use}"])
    try:
        deadline = time.monotonic() + 10
        while not session_in_use(in_use) and time.monotonic() < deadline:  # its argv is in place
            time.sleep(0.05)
        assert session_in_use(in_use)
        assert not session_in_use(idle)
        assert prune_ray_sessions(tmp_path, 14 * DAY, now=NOW) == [idle]
        assert in_use.exists() and not idle.exists()
    finally:
        child.kill()
        child.wait()


def test_without_proc_every_session_counts_as_in_use(tmp_path, monkeypatch):
    monkeypatch.setattr(ray_sessions, "PROC", tmp_path / "no-proc")
    path = session(tmp_path, name(1), 30)
    assert ray_sessions.command_lines() is None
    assert session_in_use(path)
    assert prune_ray_sessions(tmp_path, DAY, now=NOW) == []
    assert path.exists()
