"""Fuzzing the running gateway (issue 13): mutated and arbitrary bodies at every endpoint that
takes one. Every answer is below 500, every 4xx is OpenAI's error shape with an X-Request-Id,
and afterwards the gateway serves normally. A client that trickles its body is answered or
cut off within a bound. (schemathesis over the served OpenAPI document: test_openapi_live.py.)"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.endpoints.admin_finetunes.schema import FineTuneDeploy
from serve_app.endpoints.admin_scopes.schema import AccountRef, AccountScopeChange
from serve_app.endpoints.auth.schema import Credentials
from serve_app.endpoints.chat.schema import ChatCompletionRequest
from serve_app.endpoints.keys.schema import NewKey
from tests.support.gateway_client import caller_address, mint_key
from tests.support.request_bodies import VALID, encode, json_values, near_valid

EXAMPLES = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FEWER = settings(EXAMPLES, max_examples=50)
EMAIL = "you@example.com"  # the account every valid example names
SLOW_BODY_BOUND_S = 30.0  # the test gateway's client_body_timeout_s is 5 s


def bodies(schema) -> st.SearchStrategy[bytes]:
    return st.one_of(
        near_valid(schema).map(encode),
        json_values.map(encode),
        st.binary(max_size=300),
    )


class Caller:
    """Sends a body to one endpoint and checks the answer's contract."""

    def __init__(self, http: httpx.Client):
        self.http = http
        self.statuses: dict[int, int] = {}

    def send(self, method: str, path: str, body: bytes, token: str | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json", "X-Forwarded-For": caller_address()}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = self.http.request(method, path, content=body, headers=headers)
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"{method} {path} answered {response.status_code}: {response.text[:300]}"
        if response.status_code >= 400:
            assert response.headers.get("x-request-id"), f"{response.status_code} without X-Request-Id"
            error = response.json()["error"]
            assert isinstance(error["message"], str) and isinstance(error["type"], str)
            assert {"param", "code"} <= set(error)
        return response


@pytest.fixture(scope="module")
def http(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def caller(http) -> Caller:
    return Caller(http)


@pytest.fixture(scope="module")
def key(gateway) -> str:
    return asyncio.run(mint_key(gateway))


@pytest.fixture(scope="module")
def session_token(caller) -> str:
    """A session of the account every valid example names (signed up here)."""
    credentials = encode(VALID[Credentials])
    caller.send("POST", "/v1/auth/signup", credentials)  # 201, or 409 when another test made it
    return caller.send("POST", "/v1/auth/login", credentials).json()["token"]


@pytest.fixture(scope="module")
def admin_token(gateway) -> str:
    return gateway.environ["NEUROAPI_ADMIN_TOKEN"]


def chat_bodies() -> st.SearchStrategy[bytes]:
    # Without `mode` and not streamed: most examples reach the fake upstream and back.
    valid = {k: v for k, v in VALID[ChatCompletionRequest].items() if k not in ("mode", "stream_options")}
    valid["stream"] = False
    return st.one_of(near_valid(ChatCompletionRequest, valid).map(encode), json_values.map(encode),
                     st.binary(max_size=300))


@EXAMPLES
@given(body=chat_bodies())
def test_chat_completions_never_answers_5xx(caller, key, body):
    caller.send("POST", "/v1/chat/completions", body, key)


@FEWER
@given(body=bodies(Credentials), path=st.sampled_from(["/v1/auth/signup", "/v1/auth/login"]))
def test_signup_and_login_never_answer_5xx(caller, body, path):
    caller.send("POST", path, body)


@FEWER
@given(body=bodies(NewKey))
def test_key_creation_never_answers_5xx(caller, session_token, body):
    caller.send("POST", "/v1/keys", body, session_token)


@FEWER
@given(data=st.data())
def test_admin_scope_never_answers_5xx(caller, session_token, admin_token, data):
    caller.send("PUT", "/v1/admin/account-scope", data.draw(bodies(AccountScopeChange)), admin_token)
    caller.send("POST", "/v1/admin/account-scope/lookup", data.draw(bodies(AccountRef)), admin_token)


@FEWER
@given(body=bodies(FineTuneDeploy))
def test_finetune_deploy_never_answers_5xx(caller, admin_token, body):
    caller.send("POST", "/v1/admin/finetunes", body, admin_token)


def test_the_gateway_serves_normally_after_the_fuzzing(caller, key, http):
    assert http.get("/healthz").status_code == 200
    answer = caller.send("POST", "/v1/chat/completions",
                         encode({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}), key)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]


def test_a_client_that_trickles_its_body_is_answered_or_cut_off(gateway, key):
    """A body declared at 100 kB and sent a byte every 0.2 s would take 5.5 hours: the gateway
    must answer or close before SLOW_BODY_BOUND_S, not hold the connection for as long."""
    address = urlsplit(gateway.url)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address.netloc}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"X-Forwarded-For: {caller_address()}\r\nContent-Length: 100000\r\n\r\n").encode()
    started = time.monotonic()
    answer = b""
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head)
        ended = False
        while not ended and time.monotonic() - started < SLOW_BODY_BOUND_S:
            try:
                sock.sendall(b" ")
            except OSError:  # reset or closed: cut off
                break
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                try:
                    piece = sock.recv(65536)
                except OSError:
                    break
                answer += piece
                ended = not piece or b"\r\n\r\n" in answer
    waited = time.monotonic() - started
    assert waited < SLOW_BODY_BOUND_S, f"still accepting a trickled body after {waited:.0f} s"
    if answer:  # an answer, not a bare close: a client error in our shape
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:300]
