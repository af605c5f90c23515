"""What NeuroAPI's edits to Serve's HAProxy config cost (``serve_app.haproxy_edge``): the same
HAProxy binary in front of the same fast fake upstream, once with the config Ray 2.60 generates
and once with NeuroAPI's edits (X-Forwarded-For rewritten, the per-source connection table, the
request-head timeout, JSON errors), and the upstream called directly, in one run:

    .venv/bin/python -m benchmarks.edge_cost [--count 3000] [--rate 500] [--duration 10]

Prints one table: latency p50 / p99 per system, sequential (one connection, keep-alive) and
open loop at ``--rate``, and the edited config's difference from Ray's. The harness (upstream and
load generator) and the two HAProxies are pinned as in ``python -m benchmarks``."""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from benchmarks import report
from benchmarks.__main__ import cpu_split, load
from benchmarks.systems import Upstream, _pinned, wait_for
from serve_app import haproxy_edge
from serve_app.haproxy_edge import EdgeSettings
from serve_app.runtime import free_port


def render_ray_config(folder: Path, host: str = "127.0.0.1", port: int = 8000, replica_port: int = 9999,
                      stats_port: int = 8404, metrics_port: int = 9101, fallback_port: int = 8500) -> str:
    """HAProxy's config exactly as Ray 2.60's HAProxyApi writes it for one app and one replica."""
    from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig
    from ray.serve.config import HTTPOptions

    config = HAProxyConfig(http_options=HTTPOptions(host=host, port=port), socket_path=str(folder / "admin.sock"),
                           server_state_base=str(folder), server_state_file=str(folder / "server-state"),
                           metrics_socket_path=str(folder / "metrics.sock"), stats_port=stats_port,
                           metrics_port=metrics_port,
                           has_received_routes=True, has_received_servers=True)
    api = HAProxyApi(cfg=config, config_file_path=str(folder / "haproxy.cfg"))
    api.set_backend_configs({"neuroapi": BackendConfig(
        name="http-neuroapi", path_prefix="/", app_name="neuroapi",
        servers=[ServerConfig(name="replica", host="127.0.0.1", port=replica_port)],
        fallback_server=ServerConfig(name="fallback", host="127.0.0.1", port=fallback_port))})
    api._generate_config_file_internal()
    return (folder / "haproxy.cfg").read_text()


class HAProxy:
    def __init__(self, folder: Path, upstream_port: int, edited: bool, cpus: set[int] | None):
        folder.mkdir(parents=True)
        self.port = free_port()
        config = render_ray_config(folder, port=self.port, replica_port=upstream_port, stats_port=free_port(),
                                   metrics_port=free_port(), fallback_port=free_port())
        if edited:
            haproxy_edge.write_error_files(str(folder))
            config = haproxy_edge.rewrite(config, EdgeSettings(real_binary=""), str(folder))
        (folder / "haproxy.cfg").write_text(config)
        self.process = subprocess.Popen([haproxy_edge.real_binary({}), "-db", "-f", str(folder / "haproxy.cfg")],
                                        preexec_fn=_pinned(cpus), start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        wait_for(f"http://127.0.0.1:{self.port}/-/healthz", process=self.process)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000, help="sequential requests per system")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of open-loop load per system")
    args = parser.parse_args()
    edge_cpus, harness_cpus = cpu_split(True)
    upstream = Upstream(harness_cpus, latency_ms=0.0, gap_ms=0.0)
    folder = Path(tempfile.mkdtemp(prefix="neuroapi-edge-cost-"))
    proxies = {"Ray's config": HAProxy(folder / "ray", upstream.port, False, edge_cpus),
               "NeuroAPI's edits": HAProxy(folder / "neuroapi", upstream.port, True, edge_cpus)}
    urls = {"direct": upstream.url, **{name: proxy.url for name, proxy in proxies.items()}}
    results: dict[str, dict[str, dict]] = {}
    try:
        for phase, spec in (("sequential", {"rate": 0, "count": args.count}),
                            (f"open loop {args.rate:g}/s", {"rate": args.rate, "duration_s": args.duration})):
            # Interleaved in one run: each system twice, the better run kept (noise on a shared box).
            for name, url in urls.items():
                runs = [report.summarise(load({"url": url, "stream": False, **spec}, harness_cpus)) for _ in range(2)]
                results.setdefault(phase, {})[name] = min(runs, key=lambda run: run["p50"])
    finally:
        for proxy in proxies.values():
            proxy.stop()
        upstream.stop()
    print(f"HAProxy {haproxy_edge.real_binary({})} in front of benchmarks.upstream (0 ms); {report.machine()}")
    print("| phase | direct p50 / p99 ms | Ray's config p50 / p99 ms | NeuroAPI's edits p50 / p99 ms "
          "| edits − Ray's, p50 / p99 ms | failed |")
    print("|---|---|---|---|---|---|")
    for phase, systems in results.items():
        ray_s, ours, direct = systems["Ray's config"], systems["NeuroAPI's edits"], systems["direct"]
        failed = sum(s["failed"] for s in systems.values())
        print(f"| {phase} | {direct['p50']:.3f} / {direct['p99']:.3f} | {ray_s['p50']:.3f} / {ray_s['p99']:.3f} "
              f"| {ours['p50']:.3f} / {ours['p99']:.3f} | {ours['p50'] - ray_s['p50']:+.3f} / "
              f"{ours['p99'] - ray_s['p99']:+.3f} | {failed} |")


if __name__ == "__main__":
    main()
