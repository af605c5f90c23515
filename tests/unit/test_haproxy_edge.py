"""The edge: NeuroAPI's edits to the HAProxy config that the installed Ray generates.

The config is rendered by Ray's own code from its installed template, so a Ray upgrade that moves
an anchor fails here (and the wrapper would refuse to start HAProxy rather than serve without the
controls)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from starlette.datastructures import Headers

from benchmarks.edge_cost import render_ray_config
from serve_app import haproxy_edge
from serve_app.callers.client_address import client_address, forwarded_for, parse_networks
from serve_app.haproxy_edge import EdgeSettings
from serve_app.runtime import free_port, wait_until_ready


def rewrite(config: str, edge: EdgeSettings, folder: Path) -> str:
    haproxy_edge.write_error_files(str(folder))
    return haproxy_edge.rewrite(config, edge, str(folder))


def haproxy_binary() -> str:
    binary = haproxy_edge.real_binary({})
    if not os.path.isfile(binary):
        pytest.skip("no HAProxy binary installed")
    return binary


def edge(**overrides) -> EdgeSettings:
    return EdgeSettings(**{"real_binary": "/bin/false", **overrides})


def frontend(config: str) -> str:
    return re.search(r"^frontend http_frontend\n(?:(?!^\S).*\n)*", config, re.M).group(0)


def test_every_edit_applies_to_the_config_ray_generates_and_haproxy_accepts_it(tmp_path):
    edited = rewrite(render_ray_config(tmp_path), edge(trusted_proxies=["10.0.0.0/8", "::1/128"],
                                                       request_timeout_s=7, max_connections_per_source=33), tmp_path)
    # Admin socket: only the gateway's user.
    assert re.search(r"^\s*stats socket \S+ mode 600 level admin", edited, re.M)
    assert "mode 666" not in edited
    # Every listener on the host NeuroAPI was told, none on all interfaces.
    assert re.search(r"^frontend prometheus\n    bind 127\.0\.0\.1:9101$", edited, re.M)
    assert re.search(r"^listen stats\n  bind 127\.0\.0\.1:8404$", edited, re.M)
    assert not re.search(r"^\s*bind (\*|):", edited, re.M)
    # Slow clients and one source's share of connections.
    assert "    timeout http-request 7s\n" in edited
    public = frontend(edited)
    assert "tcp-request connection track-sc0 src if !neuroapi_trusted_peer" in public
    assert "tcp-request connection reject if { sc0_conn_cur gt 33 }" in public
    # The client address: replaced unless a trusted proxy sent the request, then appended to.
    assert "acl neuroapi_trusted_peer src 10.0.0.0/8 ::1/128" in public
    assert "http-request set-header X-Forwarded-For %[src] unless neuroapi_trusted_peer" in public
    assert "http-request add-header X-Forwarded-For %[src] if neuroapi_trusted_peer" in public
    # HAProxy's own errors in OpenAI's shape, not Ray's text/plain 500.
    assert "500.http" not in edited
    for status in (400, 408):
        assert f"    errorfile {status} {tmp_path}/neuroapi-{status}.http\n" in edited
        raw = (tmp_path / f"neuroapi-{status}.http").read_bytes().decode()
        head, body = raw.split("\r\n\r\n")
        assert "Content-Type: application/json" in head and f"Content-Length: {len(body)}" in head
        assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    for status in (502, 503, 504):
        assert re.search(rf"^    http-error status {status} content-type application/json string "
                         r'"\{\\"error\\":\{\\"message\\":.*hdr X-Request-Id "%\[uuid\]"', edited, re.M)
    check = tmp_path / "check.cfg"
    check.write_text(edited)
    result = subprocess.run([haproxy_binary(), "-c", "-f", str(check)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


def dying_replica() -> int:
    """A replica that passes health checks and dies on every request without answering."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            connection, _ = server.accept()
            with connection:
                if b"/-/healthz" in connection.recv(65536):
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nsuccess")

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def test_haproxy_answers_a_replica_dying_mid_request_in_our_shape(tmp_path):
    """Ray's errorfiles made this a text/plain 500 with no request id."""
    binary = haproxy_binary()
    port, stats, metrics, closed = free_port(), free_port(), free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(rewrite(render_ray_config(tmp_path, port=port, replica_port=dying_replica(), stats_port=stats,
                                                metrics_port=metrics, fallback_port=closed), edge(), tmp_path))
    haproxy = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/-", timeout_s=30)  # HAProxy answers /-/healthz itself
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={}, timeout=30)
        assert response.status_code in (502, 503)
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"]
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "gateway_unavailable"
    finally:
        haproxy.terminate()
        haproxy.wait(timeout=30)


def test_without_trusted_proxies_every_caller_header_is_replaced(tmp_path):
    public = frontend(rewrite(render_ray_config(tmp_path), edge(), tmp_path))
    assert "    http-request set-header X-Forwarded-For %[src]\n" in public
    assert "    http-request del-header X-Forwarded-Proto\n" in public
    assert "add-header X-Forwarded-For" not in public and "neuroapi_trusted_peer" not in public
    assert "tcp-request connection track-sc0 src\n" in public


def test_all_interfaces_stay_all_interfaces(tmp_path):
    edited = rewrite(render_ray_config(tmp_path, host="0.0.0.0"), edge(), tmp_path)
    assert re.search(r"^listen stats\n  bind \*:8404$", edited, re.M)
    assert re.search(r"^frontend prometheus\n    bind \*:9101$", edited, re.M)


def test_a_rewritten_config_is_left_as_it_is(tmp_path):
    once = rewrite(render_ray_config(tmp_path), edge(), tmp_path)
    assert rewrite(once, edge(), tmp_path) == once


def fake_haproxy(folder: Path) -> Path:
    """A stand-in for the real binary: records the arguments it was started with."""
    binary = folder / "fake-haproxy"
    binary.write_text(f"#!/bin/sh\necho \"$@\" > {folder / 'args'}\n")
    binary.chmod(0o700)
    return binary


def test_the_wrapper_edits_the_config_then_runs_the_real_binary_with_the_same_arguments(tmp_path):
    folder, environ = haproxy_edge.install(edge(real_binary=str(fake_haproxy(tmp_path))))
    try:
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(Path(folder) / "edge.json").st_mode) == 0o600
        for name in ("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "RAY_SERVE_HAPROXY_SOCKET_PATH",
                     "RAY_SERVE_HAPROXY_SERVER_STATE_FILE", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"):
            assert environ[name].startswith(folder + "/")
        config = tmp_path / "ray" / "haproxy.cfg"
        config.parent.mkdir()
        config.write_text(render_ray_config(config.parent))
        args = ["-db", "-f", str(config), "-dR", "-sf", "123"]
        result = subprocess.run([environ["RAY_SERVE_HAPROXY_BINARY_PATH"], *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "args").read_text().split() == args
        assert config.read_text().startswith(haproxy_edge.MARKER)
    finally:
        shutil.rmtree(folder)


def test_a_changed_ray_template_stops_haproxy_naming_the_missing_anchor(tmp_path):
    folder, environ = haproxy_edge.install(edge(real_binary=str(fake_haproxy(tmp_path))))
    try:
        config = tmp_path / "ray" / "haproxy.cfg"
        config.parent.mkdir()
        config.write_text(render_ray_config(config.parent).replace("listen stats\n  bind *:", "listen stats\n  bind 0.0.0.0:"))
        result = subprocess.run([environ["RAY_SERVE_HAPROXY_BINARY_PATH"], "-db", "-f", str(config)],
                                capture_output=True, text=True)
        assert result.returncode == 3
        assert "'listen stats' + 'bind *:PORT'" in result.stderr
        assert not (tmp_path / "args").exists()  # the real binary never ran
    finally:
        shutil.rmtree(folder)


def test_client_address_reads_every_x_forwarded_for_line():
    trusted = parse_networks(["10.0.0.0/8"])
    # A trusted load balancer's line, then the one our HAProxy added for it.
    headers = Headers(raw=[(b"x-forwarded-for", b"6.6.6.6, 198.51.100.7"), (b"x-forwarded-for", b"10.0.0.5")])
    assert forwarded_for(headers) == "6.6.6.6, 198.51.100.7, 10.0.0.5"
    assert client_address("10.0.0.5", forwarded_for(headers), trusted) == "198.51.100.7"
    assert forwarded_for(Headers(raw=[])) is None
