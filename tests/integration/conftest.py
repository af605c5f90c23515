"""The session's gateway (tests/conftest.py) as a caller sees it: a minted key and an HTTP client
with an address of its own (fixtures defined in tests/support/gateway_client.py)."""

from tests.support.gateway_client import api_key, client  # noqa: F401  (fixtures)
