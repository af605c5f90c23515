"""Which address a request comes from, for per-source limits.

The socket peer, unless that peer is a configured trusted proxy: then X-Forwarded-For is read
from the right (the entry our own proxy appended) leftwards, skipping trusted proxies, and the
first untrusted address is the client. Entries further left were written by the client itself
and are never believed. Behind Serve's HAProxy every request's peer is HAProxy, so a
deployment behind an edge load balancer lists the edge and its nodes in ``trusted_proxies``."""

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


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    address = peer or "unknown"
    if not forwarded_for or not _trusted(address, trusted):
        return address
    for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
        address = hop
        if not _trusted(hop, trusted):
            break
    return address
