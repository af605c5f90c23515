"""Which address a request comes from, for per-source limits.

The socket peer, unless that peer is a configured trusted proxy: then X-Forwarded-For is read
from the right (the entry our own proxy appended) leftwards, skipping trusted proxies, and the
first untrusted address is the client. Entries further left were written by the client itself
and are never believed. Behind Serve's HAProxy the peer is the address HAProxy saw: it writes
X-Forwarded-For itself (``serve_app.haproxy_edge``; a client's own header survives only from a
trusted proxy) and the replicas' uvicorn takes the client from it only for a loopback peer, our
HAProxy. A deployment behind an edge load balancer lists the edge (and its nodes) in
``trusted_proxies``."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def forwarded_for(headers) -> str | None:
    """Every X-Forwarded-For line as one list: a proxy may add its own line rather than append
    (our HAProxy does, behind a trusted proxy), and the last entry is the one nearest to us."""
    lines = headers.getlist("x-forwarded-for")
    return ", ".join(lines) if lines else None


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    address = peer or "unknown"
    if not forwarded_for or not _trusted(address, trusted):
        return address
    for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
        address = hop
        if not _trusted(hop, trusted):
            break
    return address
