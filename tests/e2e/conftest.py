from tests.integration.conftest import api_key, client  # noqa: F401  (shared fixtures)
