"""The ingress's view of the verifier pool: every call either answers or raises the
``GatewayError`` the caller should see.

The verifier returns domain errors as values (``actors.keys.verifier``), including 503
``service_unavailable`` while Redis is unreachable; this raises them. A failure whose cause is
Redis being unreachable (a replica that raised before it could answer) is the same 503, never
a 500."""

from __future__ import annotations

from typing import Any

from core.errors import GatewayError, service_unavailable
from core.redis_conn import redis_unavailable


class RaisingHandle:
    """Wraps a deployment handle: ``await handle.method.remote(...)`` as usual."""

    def __init__(self, handle: Any):
        self._handle = handle

    def __getattr__(self, name: str) -> _RaisingMethod:
        return _RaisingMethod(getattr(self._handle, name))


class _RaisingMethod:
    def __init__(self, method: Any):
        self._method = method

    async def remote(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await self._method.remote(*args, **kwargs)
        except GatewayError:
            raise
        except Exception as error:
            if redis_unavailable(error):
                raise service_unavailable() from None
            raise
        if isinstance(result, GatewayError):
            raise result
        return result
