"""Finding a canary string where it must not be: in any file under the folders a run wrote
(logs, data directories, spill folders), or in any Redis key or value."""

from __future__ import annotations

from pathlib import Path

import redis


def scan_files(folders: list[Path], needle: str) -> list[str]:
    """The files under ``folders`` whose bytes hold ``needle`` (unreadable ones skipped)."""
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            try:
                if path.is_file() and needle.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def scan_redis(url: str, needle: str) -> list[str]:
    """The Redis keys whose name or value holds ``needle``."""
    client = redis.Redis.from_url(url)
    found = []
    for key in client.scan_iter("*"):
        if needle.encode() in key:
            found.append(key.decode())
            continue
        kind = client.type(key)
        if kind == b"string":
            values = [client.get(key)]
        elif kind == b"hash":
            values = list(client.hgetall(key).items())
        elif kind in (b"list",):
            values = client.lrange(key, 0, -1)
        elif kind in (b"set",):
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = client.zrange(key, 0, -1)
        elif kind == b"stream":
            values = client.xrange(key)
        else:
            values = []
        if needle.encode() in repr(values).encode():
            found.append(key.decode())
    return found
