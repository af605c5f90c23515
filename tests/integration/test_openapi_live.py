"""The served OpenAPI document against the running gateway (schemathesis): requests generated from
the document, sent with real credentials, and every answer checked against what the document says
(a documented status, content type and body schema; never a 5xx). Endpoints that change an
account for good (delete, log out, sign up) are left to their own tests."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.gateway_client import bearer, caller_address, mint_key

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))

# (method, path, credential): what is exercised, with which credential.
OPERATIONS = [
    ("POST", "/v1/chat/completions", "key"),
    ("POST", "/v1/messages", "key"),
    ("POST", "/v1/messages/count_tokens", "key"),
    ("POST", "/v1/generate", "key"),
    ("POST", "/v1/embeddings", "key"),
    ("GET", "/v1/models", "key"),
    ("GET", "/v1/usage", "key"),
    ("GET", "/v1/keys", "session"),
    ("POST", "/v1/keys", "session"),
    ("DELETE", "/v1/keys/{prefix}", "session"),
    ("GET", "/v1/account/export", "session"),
    ("GET", "/v1/billing", "session"),
    ("POST", "/v1/admin/account-scope/lookup", "admin"),
    ("GET", "/v1/admin/finetunes", "admin"),
    ("GET", "/v1/admin/finetunes/{name}", "admin"),
    ("GET", "/healthz", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
]


@pytest.fixture(scope="module")
def schema(gateway):
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    return schemathesis.openapi.from_dict(document)


@pytest.fixture(scope="module")
def credentials(gateway) -> dict[str, str]:
    with httpx.Client(base_url=gateway.url, timeout=60, headers={"X-Forwarded-For": caller_address()}) as http:
        account = {"email": f"openapi-{secrets.token_hex(4)}@example.com", "password": "a long enough password"}
        assert http.post("/v1/auth/signup", json=account).status_code == 201
        session = http.post("/v1/auth/login", json=account).json()["token"]
    return {"key": asyncio.run(mint_key(gateway)), "session": session,
            "admin": gateway.environ["NEUROAPI_ADMIN_TOKEN"]}


def test_every_exercised_operation_is_documented(schema):
    documented = {(method.upper(), path) for path, item in schema.raw_schema["paths"].items() for method in item}
    assert {(method, path) for method, path, _ in OPERATIONS} <= documented


@pytest.mark.parametrize(("method", "path", "credential"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_answers_are_what_the_document_says(gateway, schema, credentials, method, path, credential):
    operation = schema[path][method]
    # One address per operation: a run of refused credentials must not block the next test's calls.
    headers = {"X-Forwarded-For": caller_address(), **(bearer(credentials[credential]) if credential else {})}
    statuses: list[int] = []

    @EXAMPLES
    @given(case=operation.as_strategy())
    def exchange(case):
        response = case.call_and_validate(base_url=gateway.url, headers=headers, checks=CHECKS, timeout=60)
        statuses.append(response.status_code)

    exchange()
    assert statuses, "no request was sent"


# Real requests of each model-calling endpoint: generated bodies rarely name a served model, so
# the documented success answers (JSON, and every streamed event) are checked on these.
REAL_CALLS = {
    "chat": ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}),
    "chat-stream": ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}],
                                             "stream": True, "stream_options": {"include_usage": True}}),
    "chat-claude": ("/v1/chat/completions", {"model": "claude-haiku-4-5", "max_tokens": 50,
                                             "messages": [{"role": "user", "content": "Hi"}]}),
    "messages-claude": ("/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 50,
                                         "messages": [{"role": "user", "content": "Hi"}]}),
    "messages-gpt-stream": ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 50, "stream": True,
                                             "messages": [{"role": "user", "content": "Hi"}]}),
    "count-tokens": ("/v1/messages/count_tokens", {"model": "claude-haiku-4-5",
                                                   "messages": [{"role": "user", "content": "Hi"}]}),
    "generate": ("/v1/generate", {"prompt": "Hi", "mode": "fast", "message_history": [
        {"role": "user", "content": "Earlier"}, {"role": "assistant", "content": "Yes"}]}),
    "generate-stream": ("/v1/generate", {"prompt": "Hi", "model": "gpt-4o-mini", "stream": True}),
    "embeddings": ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["one", "two"]}),
}


@pytest.mark.parametrize("name", REAL_CALLS)
def test_real_answers_are_what_the_document_says(gateway, schema, credentials, name):
    path, body = REAL_CALLS[name]
    case = schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call_and_validate(base_url=gateway.url, checks=CHECKS, timeout=60,
                                      headers={"X-Forwarded-For": caller_address(), **bearer(credentials["key"])})
    assert response.status_code == 200, response.text[:300]
