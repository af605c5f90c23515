"""Starting NeuroAPI on Ray Serve: the Serve settings we chose, and readiness.

Why these settings (measured in docs/performance.md): Serve's HAProxy ingress with
throughput-optimised replicas cuts the latency Serve itself adds several-fold against its
Python proxy, so they are NeuroAPI's defaults. They are read when Ray starts, so they are set
in the environment before ``ray`` is imported; a value already in the environment wins."""

from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

from serve_app import haproxy_edge, ray_sessions, request_id

APP_NAME = "neuroapi"
SERVE_ENVIRONMENT = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": request_id.IMPORT_PATH,
    "RAY_USAGE_STATS_ENABLED": "0",
    # How long a stopping ingress replica keeps its port for load balancers to deregister it.
    # Serve's 30 s suits a cloud load balancer; our HAProxy on the same node needs seconds.
    # Behind an external load balancer, set it to that balancer's deregistration delay.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
    # Every log file Ray and Serve write (system processes, replicas, workers' .out/.err: the
    # last only when this is set) rotates at 64 MiB and keeps 5 old files: at most 384 MiB per log.
    "RAY_ROTATION_MAX_BYTES": str(64 << 20),
    "RAY_ROTATION_BACKUP_COUNT": "5",
}


def free_port() -> int:
    """A port free on every interface (HAProxy's listeners bind all of them)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def handle_message_bytes(max_chat_body_bytes: int) -> int:
    """Serve's cap on one handle message (gRPC, 4 MiB by default): a chat body crosses from the
    ingress to a backend in one, as a pickled dict, so twice the body plus room for the rest."""
    return max(4 << 20, 2 * max_chat_body_bytes + (1 << 20))


def prepare_environment(settings=None) -> None:
    for name, value in SERVE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if settings is not None:
        os.environ.setdefault("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH",
                              str(handle_message_bytes(settings.max_chat_body_bytes)))
        prepare_edge(settings)
    # Serve's HAProxy mode listens on fixed ports besides ours: stats (8404), metrics (9101)
    # and the fallback proxy (8500) that HAProxy sends requests to while no replica is up.
    # Two gateways on one machine would share that fallback and answer for each other, so
    # each gets free ones.
    for name in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                 "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"):
        os.environ.setdefault(name, str(free_port()))


_edge_folder: str | None = None


def prepare_edge(settings) -> None:
    """Serve's HAProxy, as NeuroAPI needs it (serve_app.haproxy_edge): a wrapper edits the config
    Ray generates. Always set, never inherited: a parent process's values would point at its own
    gateway's private directory."""
    global _edge_folder
    edge = haproxy_edge.EdgeSettings(
        real_binary=haproxy_edge.real_binary(dict(os.environ)),
        trusted_proxies=list(settings.trusted_proxies),
        request_timeout_s=settings.client_request_timeout_s,
        max_connections_per_source=settings.max_connections_per_source,
    )
    _edge_folder, environ = haproxy_edge.install(edge)
    os.environ.update(environ)
    os.environ["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] = str(settings.client_idle_timeout_s)
    # The replicas' uvicorn rewrites the client address from X-Forwarded-For only for a peer on
    # loopback: our HAProxy, which writes that header itself (see haproxy_edge).
    os.environ["FORWARDED_ALLOW_IPS"] = "127.0.0.1,::1"


def keep_ray_token_private() -> None:
    """Ray's internal ports listen on every interface; its token authentication (on by default
    for a local cluster) is what guards them, and Ray writes that token world-readable to
    ~/.ray/auth_token. Only this user may read it."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return  # the operator's own token, kept as they chose
    token = Path.home() / ".ray" / "auth_token"
    if token.exists():
        os.chmod(token.parent, 0o700)
        os.chmod(token, 0o600)


def wait_until_ready(url: str, timeout_s: float = 120.0, should_stop=lambda: False) -> None:
    deadline = time.monotonic() + timeout_s
    while not should_stop():
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway did not answer on {url} within {timeout_s:.0f}s")
        time.sleep(0.2)


def start_gateway(settings, redis_url: str, num_cpus: int | None = None, should_stop=lambda: False) -> str:
    """Start (or join, with RAY_ADDRESS) Ray, deploy the application, return its base URL."""
    prepare_environment(settings)
    import ray
    from ray import serve

    from core.invalidation import mark_registry_fresh
    from serve_app.app import build_app

    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            # Our own local Ray: old runs' session directories go first, from where Ray puts them
            # without a _temp_dir (RAY_TMPDIR, else on Linux TMPDIR, else /tmp; then ray/).
            from ray._common.utils import get_default_ray_temp_dir

            ray_sessions.prune_ray_sessions(Path(get_default_ray_temp_dir()),
                                            settings.log_retention_days * 86400.0)
        ray.init(
            # "local" starts our own Ray even when another one runs on this machine.
            address=os.environ.get("RAY_ADDRESS") or "local",
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level="WARNING",
            log_to_driver=False,
            _metrics_export_port=settings.metrics_port,
        )
    keep_ray_token_private()
    serve.start(http_options={"host": settings.host, "port": settings.port})
    # Before any cache holder exists: a missing holder registry has missed nothing (core.invalidation).
    mark_registry_fresh(redis_url)
    serve.run(build_app(settings, redis_url), name=APP_NAME, route_prefix="/")
    url = f"http://{settings.host}:{settings.port}"
    wait_until_ready(url, should_stop=should_stop)
    return url


def in_house_engines(settings) -> dict[str, str]:
    """In-house model → the engine its replicas run ("vllm-gpu", "vllm-cpu", "transformers")."""
    import asyncio

    from ray import serve

    from core.naming import model_deployment

    async def ask() -> dict[str, str]:
        # In an event loop: with throughput-optimised Serve, handles route on the caller's loop.
        return {name: await serve.get_deployment_handle(model_deployment(name), APP_NAME).engine_name.remote()
                for name in settings.served_in_house()}

    return asyncio.run(ask())


def metrics_url() -> str:
    """Where this node's Prometheus metrics are (NeuroAPI's own are named ``ray_neuroapi_*``)."""
    import ray

    node = ray._private.worker.global_worker.node
    return f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"


def stop_gateway() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        except Exception:  # Ray's processes may already be gone (Ctrl-C reaches them too)
            pass
        ray.shutdown()
    if _edge_folder is not None:  # HAProxy is gone with Serve: its private files go too
        shutil.rmtree(_edge_folder, ignore_errors=True)
