"""The embedded Redis that `neuroapi serve` and the CLI start when no NEUROAPI_REDIS_URL is set."""

import os
import time

import pytest
import redis

from serve_app.local_redis import LocalRedis


def unix_client(local: LocalRedis) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(local.socket_path), decode_responses=True)


def server_pid(local: LocalRedis) -> int:
    """The process id of the redis-server answering on the data directory's socket."""
    return int(unix_client(local).info("server")["process_id"])


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_starts_with_append_only_persistence_and_keeps_data_across_restarts(tmp_path):
    with LocalRedis(tmp_path) as local:
        assert local.started_here
        client = unix_client(local)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        client.set("neuroapi:probe", "kept")
        pid = server_pid(local)
    # Stopped with its starter: the socket no longer answers and the process is gone.
    with pytest.raises(redis.ConnectionError):
        unix_client(local).ping()
    assert not is_running(pid)
    with LocalRedis(tmp_path) as again:
        assert server_pid(again) != pid  # a fresh server, reading the append-only file
        assert unix_client(again).get("neuroapi:probe") == "kept"


def test_a_second_user_reuses_the_running_one_and_does_not_stop_it(tmp_path):
    owner = LocalRedis(tmp_path).start(hold=True)
    try:
        pid = server_pid(owner)
        unix_client(owner).set("neuroapi:probe", "owner's")
        with LocalRedis(tmp_path) as visitor:
            assert not visitor.started_here
            assert server_pid(visitor) == pid  # the owner's server, not a second one
        # The visitor's stop left the Redis it did not start running, data intact.
        assert is_running(pid) and server_pid(owner) == pid
        assert unix_client(owner).get("neuroapi:probe") == "owner's"
    finally:
        owner.stop()
    assert not is_running(pid)


def log_files(local: LocalRedis) -> dict[str, int]:
    """The redis log files in its folder, with their sizes."""
    sizes = {}
    for path in local.folder.glob("redis.log*"):
        try:
            sizes[path.name] = path.stat().st_size
        except FileNotFoundError:  # rotated away between the listing and the stat
            continue
    return sizes


def test_a_log_past_its_bound_is_rotated_at_start_keeping_one_old_copy(tmp_path):
    folder = tmp_path / "redis"
    folder.mkdir()
    (folder / "redis.log").write_text("x" * 70_000)  # a previous run's, past the bound
    (folder / "redis.log.1").write_text("the run before that\n")
    with LocalRedis(tmp_path, log_max_bytes=64_000, log_check_every_s=3600) as local:
        assert unix_client(local).config_get("loglevel")["loglevel"] == "warning"
        assert (folder / "redis.log.1").read_text() == "x" * 70_000  # the oldest copy is gone
        assert set(log_files(local)) <= {"redis.log", "redis.log.1"}
        assert log_files(local).get("redis.log", 0) < 64_000
    # Within its bound, a log is kept and appended to across restarts.
    (folder / "redis.log").write_text("kept\n")
    with LocalRedis(tmp_path, log_max_bytes=64_000, log_check_every_s=3600):
        assert (folder / "redis.log").read_text().startswith("kept\n")
        assert (folder / "redis.log.1").read_text() == "x" * 70_000


def inode(path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:  # between a rotation and Redis's next line
        return None


def test_a_running_servers_log_never_grows_past_its_bound(tmp_path):
    bound, every_s = 16_000, 0.05
    with LocalRedis(tmp_path, log_max_bytes=bound, log_check_every_s=every_s) as local:
        admin = unix_client(local)
        admin.config_set("loglevel", "verbose")  # a line per connection: real writes, and many
        largest = 0
        for _ in range(40):  # a burst of about 2 KB between two checks, many bounds in all
            for _ in range(12):
                redis.Redis(unix_socket_path=str(local.socket_path)).ping()
            time.sleep(every_s)
            sizes = log_files(local)
            assert set(sizes) <= {"redis.log", "redis.log.1"}
            largest = max(largest, *sizes.values())
        assert (local.folder / "redis.log.1").exists()  # it did rotate
        # Never past the bound by more than what Redis wrote between two checks (a slow check
        # under load lets a few bursts through; without rotation it would reach about 80 KB).
        assert largest < 2 * bound
        # Redis writes on into a fresh redis.log after a rotation (it opens the file per line; a
        # rotation may just have taken the last line written, so write until a new file appears).
        rotated = (local.folder / "redis.log.1").stat().st_ino
        current = local.folder / "redis.log"
        deadline = time.monotonic() + 10
        while inode(current) in (None, rotated):
            assert time.monotonic() < deadline, "Redis did not write on into a fresh redis.log"
            redis.Redis(unix_socket_path=str(local.socket_path)).ping()
            time.sleep(0.05)
        assert "Accepted" in current.read_text() + (local.folder / "redis.log.1").read_text()
