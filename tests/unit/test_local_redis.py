"""The embedded Redis that `neuroapi serve` and the CLI start when no NEUROAPI_REDIS_URL is set."""

import redis

from serve_app.local_redis import LocalRedis


def unix_client(local: LocalRedis) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(local.socket_path), decode_responses=True)


def test_starts_with_append_only_persistence_and_keeps_data_across_restarts(tmp_path):
    with LocalRedis(tmp_path) as local:
        assert local.started_here
        client = unix_client(local)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        client.set("neuroapi:probe", "kept")
    assert not local.socket_path.exists() or not local.started_here
    with LocalRedis(tmp_path) as again:
        assert unix_client(again).get("neuroapi:probe") == "kept"


def test_a_second_user_reuses_the_running_one_and_does_not_stop_it(tmp_path):
    owner = LocalRedis(tmp_path).start(hold=True)
    try:
        with LocalRedis(tmp_path) as visitor:
            assert not visitor.started_here
        assert unix_client(owner).ping()
    finally:
        owner.stop()
