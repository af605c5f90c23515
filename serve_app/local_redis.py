"""The embedded Redis: a ``redis-server`` child on a Unix socket under the data directory,
append-only file on, used when no ``NEUROAPI_REDIS_URL`` is set.

Whoever starts it holds an exclusive lock on ``redis.lock`` for as long as it runs, so a CLI
command never stops a Redis that ``neuroapi serve`` is using, and two starters never race.

Its log, ``redis.log``, is bounded: the server runs at ``loglevel warning`` (start-up problems,
persistence and memory errors; no per-connection lines), and whoever holds the lock rotates the
file once it is past ``LOG_MAX_BYTES`` (at start, then every ``LOG_CHECK_EVERY_S``) to
``redis.log.1``, replacing the older copy. Renaming under a running redis-server is safe: it
opens its log file afresh for every line it writes, so the next line starts a new ``redis.log``.
Each file thus stays within ``LOG_MAX_BYTES`` plus what Redis writes in one check interval. A
watcher thread rather than a pipe through a bounded writer: the server must outlive a starter
that dies (the next one finds it running), which a pipe to the dead starter would not allow."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

LOG_MAX_BYTES = 8 << 20
LOG_CHECK_EVERY_S = 30.0


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


def rotate_log(path: Path, max_bytes: int) -> bool:
    """Move ``path`` to ``path.1`` (replacing an older copy) once it is past ``max_bytes``."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
        os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        return False
    return True


class LocalRedis:
    def __init__(self, data_dir: Path, log_max_bytes: int = LOG_MAX_BYTES,
                 log_check_every_s: float = LOG_CHECK_EVERY_S):
        self.folder = Path(data_dir) / "redis"
        self.socket_path = self.folder / "redis.sock"
        self.log_path = self.folder / "redis.log"
        self._log_max_bytes = log_max_bytes
        self._log_check_every_s = log_check_every_s
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_file = None
        self._log_watch: tuple[threading.Thread, threading.Event] | None = None

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
            else:
                self._watch_log()
            return self
        binary = shutil.which("redis-server")
        if binary is None:
            self._release_lock()
            raise LocalRedisError(
                "redis-server is not installed: install it (Debian/Ubuntu: apt-get install "
                "redis-server) or point NEUROAPI_REDIS_URL at a Redis"
            )
        self.socket_path.unlink(missing_ok=True)
        rotate_log(self.log_path, self._log_max_bytes)
        self._process = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
             "--dir", str(self.folder), "--appendonly", "yes", "--save", "",
             "--logfile", str(self.log_path), "--loglevel", "warning", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # Its own session: Ctrl-C on our terminal must not stop it before we are done with it.
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not _answers_ping(self.socket_path):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LocalRedisError(f"redis-server did not start; see {self.log_path}")
            time.sleep(0.05)
        self._watch_log()
        return self

    def _watch_log(self) -> None:
        """While we hold the lock: rotate ``redis.log`` once it is past its bound."""
        stopping = threading.Event()

        def watch() -> None:
            while not stopping.wait(self._log_check_every_s):
                try:
                    rotate_log(self.log_path, self._log_max_bytes)
                except OSError:  # the next check tries again
                    pass

        thread = threading.Thread(target=watch, name="neuroapi-redis-log", daemon=True)
        thread.start()
        self._log_watch = (thread, stopping)

    def stop(self) -> None:
        if self._log_watch is not None:
            thread, stopping = self._log_watch
            stopping.set()
            thread.join()
            self._log_watch = None
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
