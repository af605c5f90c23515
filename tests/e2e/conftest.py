from tests.support.gateway_client import api_key, client  # noqa: F401  (fixtures shared with tests/integration)
