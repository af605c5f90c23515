"""The faults ``benchmarks.faults`` injects into a running ``neuroapi serve``, and how each is
undone: the switchable fake upstream, kills of one Serve replica, Redis shut down or frozen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import redis

from benchmarks.systems import NeuroAPI, Upstream, _pinned, wait_for
from core.naming import provider_deployment
from serve_app.runtime import APP_NAME, free_port


class FaultUpstream(Upstream):
    """``benchmarks.fault_upstream`` in its own process; ``set(fault)`` switches what it does."""

    def __init__(self, cpus: set[int] | None, gap_ms: float):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fault_upstream", "--port", str(self.port), "--gap-ms", str(gap_ms)],
            preexec_fn=_pinned(cpus), start_new_session=True)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.url = f"{self.base_url}/chat/completions"
        self.headers = {}
        wait_for(f"http://127.0.0.1:{self.port}/", process=self.process, ready=lambda status: status == 404)

    def set(self, fault: str) -> None:
        httpx.put(f"http://127.0.0.1:{self.port}/_fault/{fault}", timeout=10).raise_for_status()


# ---- finding the gateway's processes --------------------------------------------------------

def replica_pids(gateway_pid: int, deployment: str) -> list[int]:
    """Serve replica processes of ``deployment`` in the gateway's tree (Ray titles them
    ``ray::ServeReplica:<app>:<deployment>``)."""
    marker = f"ServeReplica:{APP_NAME}:{deployment}"
    pids = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if marker in cmdline and (cmdline.split(marker, 1)[1][:1] in ("", " ")):
            pids.append(process.info["pid"])
    return sorted(pids)


def redis_process(data_dir: Path) -> psutil.Process:
    socket_path = str(data_dir / "redis" / "redis.sock")
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        if "redis-server" in (process.info["name"] or "") and socket_path in " ".join(process.info["cmdline"] or []):
            return process
    raise RuntimeError(f"no redis-server for {socket_path}")


# ---- the phases -----------------------------------------------------------------------------

@dataclass
class Bench:
    gateway: NeuroAPI
    upstream: FaultUpstream
    redis_url: str
    restarted_redis: list[subprocess.Popen] = field(default_factory=list)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=5)


@dataclass
class Fault:
    name: str
    what: str
    start: Callable[[Bench], dict]  # injects the fault; returns details for the record
    end: Callable[[Bench], None] | None = None  # None: an instant fault (a kill)


def _upstream(fault: str, what: str) -> Fault:
    return Fault(f"upstream-{fault}", what, lambda b: b.upstream.set(fault) or {}, lambda b: b.upstream.set("none"))


def _kill(deployment: str) -> Fault:
    def start(bench: Bench) -> dict:
        pids = replica_pids(bench.gateway.pid, deployment)
        if not pids:
            raise RuntimeError(f"no replica of {deployment} found")
        os.kill(pids[0], signal.SIGKILL)
        return {"killed_pid": pids[0], "replicas": len(pids)}
    return Fault(f"kill-{deployment}", f"kill -9 of one {deployment} replica", start)


_stopped: dict[str, tuple[list[str], str]] = {}


REDIS_SETTINGS = ("port", "unixsocket", "unixsocketperm", "dir", "appendonly", "save", "appendfilename", "logfile")


def redis_command_line(process: psutil.Process, client: redis.Redis) -> list[str]:
    """The command line that starts this Redis again with the same files. Its settings are read
    from Redis itself: redis-server rewrites its process title, so ``ps -o args=`` no longer
    shows them."""
    # argv[0], which the rewritten title keeps (not exe(): Debian's redis-server is a link to
    # redis-check-rdb, which picks its role from argv[0]).
    args = [process.cmdline()[0].split()[0]]
    for name in REDIS_SETTINGS:
        for key, value in client.config_get(name).items():
            args += [f"--{key}", value]
    return args + ["--daemonize", "no"]


def _redis_down(bench: Bench) -> dict:
    process = redis_process(bench.gateway.folder)
    _stopped["redis"] = (redis_command_line(process, bench.redis()), process.cwd())
    process.terminate()  # SIGTERM: Redis flushes its append-only file and closes every connection
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # not our child: gone or a zombie until neuroapi serve reaps it
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    return {"pid": process.pid}


def _redis_up(bench: Bench) -> None:
    # The same command line (so it reloads the same append-only file), in its own session.
    cmdline, cwd = _stopped.pop("redis")
    bench.restarted_redis.append(subprocess.Popen(cmdline, cwd=cwd, start_new_session=True,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if bench.redis().ping():
                return
        except redis.RedisError:
            time.sleep(0.1)
    raise RuntimeError("redis-server did not come back")


def _redis_freeze(bench: Bench) -> dict:
    process = redis_process(bench.gateway.folder)
    _stopped["frozen"] = ([str(process.pid)], "")
    process.send_signal(signal.SIGSTOP)
    return {"pid": process.pid}


def _redis_thaw(bench: Bench) -> None:
    os.kill(int(_stopped.pop("frozen")[0][0]), signal.SIGCONT)


def undo(bench: Bench) -> None:
    """Whatever a failed phase left behind: the upstream back to normal, Redis running."""
    bench.upstream.set("none")
    if "frozen" in _stopped:
        _redis_thaw(bench)
    if "redis" in _stopped:
        _redis_up(bench)


FAULTS = [
    _upstream("hang", "the upstream accepts and never sends headers"),
    _upstream("status500", "the upstream answers 500"),
    _upstream("reset", "the upstream resets the connection mid-answer"),
    _upstream("malformed", "the upstream answers 200 `{}` / a first SSE event `[1]`"),
    _upstream("ping_only", "the upstream streams only `: ping` comments"),
    _kill(provider_deployment("openai")),
    _kill("Ingress"),
    _kill("KeyVerifier"),
    _kill("MetadataBatcher"),
    Fault("redis-down", "Redis shut down (SIGTERM), then restarted with its command line", _redis_down, _redis_up),
    Fault("redis-frozen", "Redis frozen (SIGSTOP), then SIGCONT", _redis_freeze, _redis_thaw),
]
