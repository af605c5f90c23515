"""A plain object behind the calling convention of a Ray deployment handle
(``handle.method.remote(*args)``), so the ingress's plain ``Gateway`` runs in a unit test over
the plain deployment classes, in process, without Ray."""

from __future__ import annotations

from typing import Any


class LocalHandle:
    def __init__(self, target: Any):
        self._target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)
        return _Remote(method)


class _Remote:
    def __init__(self, method):
        self.remote = method  # a coroutine function: ``await handle.m.remote(...)`` as with Ray
