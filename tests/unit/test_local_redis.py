"""The embedded Redis that `neuroapi serve` and the CLI start when no NEUROAPI_REDIS_URL is set."""

import os

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
