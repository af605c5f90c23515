"""The embedded Redis: a ``redis-server`` child on a Unix socket under the data directory,
append-only file on, used when no ``NEUROAPI_REDIS_URL`` is set.

Whoever starts it holds an exclusive lock on ``redis.lock`` for as long as it runs, so a CLI
command never stops a Redis that ``neuroapi serve`` is using, and two starters never race."""

from __future__ import annotations

import fcntl
import shutil
import socket
import subprocess
import time
from pathlib import Path


class LocalRedisError(RuntimeError):
    pass


def _answers_ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1.0)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class LocalRedis:
    def __init__(self, data_dir: Path):
        self.folder = Path(data_dir) / "redis"
        self.socket_path = self.folder / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_file = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def started_here(self) -> bool:
        return self._process is not None

    def start(self, hold: bool = False) -> LocalRedis:
        """Use the one already running for this data directory, or start one.

        ``hold`` (for ``neuroapi serve``): keep the lock even when reusing a running one, so
        a short-lived starter (a CLI command) cannot stop it underneath us."""
        if not hold and _answers_ping(self.socket_path):
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.folder / "redis.lock", "w")
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        if _answers_ping(self.socket_path):  # left running by a process that died
            if not hold:
                self._release_lock()
            return self
        binary = shutil.which("redis-server")
        if binary is None:
            self._release_lock()
            raise LocalRedisError(
                "redis-server is not installed: install it (Debian/Ubuntu: apt-get install "
                "redis-server) or point NEUROAPI_REDIS_URL at a Redis"
            )
        self.socket_path.unlink(missing_ok=True)
        self._process = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
             "--dir", str(self.folder), "--appendonly", "yes", "--save", "",
             "--logfile", str(self.folder / "redis.log"), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # Its own session: Ctrl-C on our terminal must not stop it before we are done with it.
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not _answers_ping(self.socket_path):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LocalRedisError(f"redis-server did not start; see {self.folder / 'redis.log'}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()  # SIGTERM: redis-server flushes the AOF and exits
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
