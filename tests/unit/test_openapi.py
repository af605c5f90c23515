"""The served OpenAPI document (``serve_app.openapi``, ``serve_app/endpoints/docs``): every route
the app serves is in it, request schemas are the models the endpoints validate with, it is valid
OpenAPI 3.1, errors have the shapes the gateway really sends, and ``/docs`` renders it without
anything from the internet. No Ray: the app is built over a stub gateway (routes only)."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.routing import Mount

from actors.limits.store import MonthSpend, budget_view
from actors.metering.usage_report import usage_view
from actors.metering.usage_store import COUNTERS
from core.errors import GatewayError, invalid_api_key, service_unavailable
from core.limits import Limits
from finetunes.registry import FineTune as RegisteredFineTune
from serve_app.api import build_api
from serve_app.endpoints.account.schema import AccountDeletion
from serve_app.endpoints.admin_finetunes.router import finetune_fields
from serve_app.endpoints.admin_finetunes.schema import FineTuneDeploy
from serve_app.endpoints.admin_scopes.schema import AccountRef, AccountScopeChange
from serve_app.endpoints.auth.schema import Credentials
from serve_app.endpoints.chat.schema import ChatCompletionRequest
from serve_app.endpoints.docs.router import docs_router
from serve_app.endpoints.embeddings.schema import EmbeddingRequest
from serve_app.endpoints.generate.schema import GenerateRequest
from serve_app.endpoints.keys.schema import NewKey
from serve_app.endpoints.messages.schema import MessagesRequest
from serve_app.openapi import COMPONENTS, OPERATOR_TAG, build_document

# Each body-taking route and the model its handler validates with (``parse_body``).
VALIDATED_BY: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/v1/chat/completions"): ChatCompletionRequest,
    ("post", "/v1/auth/signup"): Credentials,
    ("post", "/v1/auth/login"): Credentials,
    ("post", "/v1/keys"): NewKey,
    ("delete", "/v1/account"): AccountDeletion,
    ("post", "/v1/admin/account-scope/lookup"): AccountRef,
    ("put", "/v1/admin/account-scope"): AccountScopeChange,
    ("post", "/v1/admin/finetunes"): FineTuneDeploy,
    ("post", "/v1/messages"): MessagesRequest,
    ("post", "/v1/generate"): GenerateRequest,
    ("post", "/v1/embeddings"): EmbeddingRequest,
}
UNDOCUMENTED_METHODS = {"HEAD", "OPTIONS"}


class StubGateway:
    """Enough of a ``Gateway`` to build the routers; no request is served through it."""

    def __getattr__(self, name: str) -> StubGateway:
        return StubGateway()


@pytest.fixture(scope="module")
def api():
    return build_api(StubGateway())


@pytest.fixture(scope="module")
def document(api) -> dict:
    return build_document(api)


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def resolved(schema, components: dict, seen: tuple = ()):
    """``schema`` with every ``$ref`` replaced by what it names (for comparing two documents)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            assert name not in seen, f"recursive schema {name}"
            return resolved(components[name], components, (*seen, name))
        if isinstance(schema.get("mapping"), dict):  # a discriminator's mapping names components: compare what they name
            return {**schema, "mapping": {tag: resolved({"$ref": ref}, components, seen)
                                          for tag, ref in schema["mapping"].items()}}
        return {key: resolved(value, components, seen) for key, value in schema.items() if key != "$defs"}
    if isinstance(schema, list):
        return [resolved(value, components, seen) for value in schema]
    return schema


def model_schema(model: type[BaseModel], mode: str = "validation") -> dict:
    schema = model.model_json_schema(mode=mode, ref_template=COMPONENTS)  # discriminator mappings name refs
    return resolved(schema, schema.get("$defs", {}))


def component(document: dict, name: str) -> dict:
    """A component as a standalone JSON schema (its refs resolvable), for jsonschema."""
    return {**document["components"]["schemas"][name], "components": document["components"]}


def undocumented(api, document: dict) -> list[str]:
    """What ``api`` serves that its document does not describe (or describes without ``documented``),
    and what the document describes that nothing serves."""
    missing, served = [], set()
    for route in api.routes:
        if isinstance(route, Mount):  # a sub-application: something under its prefix must be documented
            if not any(path.startswith(route.path) for path in document["paths"]):
                missing.append(f"mount {route.path}")
            continue
        path = getattr(route, "path_format", getattr(route, "path", None))
        for method in sorted(set(getattr(route, "methods", None) or ()) - UNDOCUMENTED_METHODS):
            served.add((method.lower(), path))
            operation = document["paths"].get(path, {}).get(method.lower())
            # documented(...) on the decorator gives a summary, an explicit security list and errors.
            if operation is None or not (operation.get("summary") and "security" in operation
                                         and "500" in operation["responses"]):
                missing.append(f"{method} {path}")
    missing += [f"{method.upper()} {path} (not served)" for method, path, _ in operations(document)
                if (method, path) not in served]
    return missing


def test_every_served_route_is_documented_with_its_methods(api, document):
    assert undocumented(api, document) == []
    assert sum(1 for _ in operations(document)) >= 25


def test_a_route_added_without_documentation_is_caught():
    api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # as build_api makes it
    api.include_router(docs_router())

    async def secret() -> dict:
        return {}

    api.add_api_route("/v1/undocumented", secret, methods=["POST"])
    api.add_api_route("/v1/hidden", secret, methods=["GET"], include_in_schema=False)
    assert undocumented(api, build_document(api)) == ["POST /v1/undocumented", "GET /v1/hidden"]


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate(document)
    json.dumps(document, allow_nan=False)  # serialisable as served


def test_request_schemas_are_the_models_that_validate_the_bodies(document):
    components = document["components"]["schemas"]
    bodies = {(method, path): operation["requestBody"] for method, path, operation in operations(document)
              if "requestBody" in operation}
    assert set(VALIDATED_BY) <= set(bodies)
    for where, model in VALIDATED_BY.items():
        schema = bodies[where]["content"]["application/json"]["schema"]
        assert resolved(schema, components) == model_schema(model), f"{where}: not {model.__name__}'s schema"
    assert bodies[("post", "/v1/chat/completions")]["required"] is True
    assert bodies[("post", "/v1/keys")]["required"] is False  # an empty body mints an unnamed key


def test_the_chat_request_schema_refuses_what_the_endpoint_refuses(document):
    """The documented schema is usable by a client: it accepts a real request and refuses an
    unknown parameter, as the endpoint does."""
    schema = component(document, "ChatCompletionRequest")
    jsonschema.validate({"model": "fast", "messages": [{"role": "user", "content": "hi"}]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"model": "fast", "messages": [{"role": "user", "content": "hi"}], "nonsense": 1}, schema)


def test_streaming_endpoints_document_their_events(document):
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
    assert set(chat["content"]) == {"application/json", "text/event-stream"}
    assert "[DONE]" in chat["description"]
    event = chat["content"]["text/event-stream"]["schema"]  # one event, as OpenAPI 3.2 reads it
    done, data = event["properties"]["data"]["anyOf"]
    assert done == {"const": "[DONE]"} and data["contentMediaType"] == "application/json"
    assert data["contentSchema"]["anyOf"] == [{"$ref": "#/components/schemas/ChatCompletionChunk"},
                                              {"$ref": "#/components/schemas/Error"}]


def test_errors_are_documented_in_the_shape_the_gateway_sends(document):
    for method, path, operation in operations(document):
        shape = "AnthropicError" if path.startswith("/v1/messages") else "Error"
        errors = {code: r for code, r in operation["responses"].items() if int(code) >= 400}
        assert "500" in errors
        for code, response in errors.items():
            assert response["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{shape}"}, \
                f"{method} {path} {code}"
        if operation["security"] and operation["security"] != [{"StripeSignature": []}]:
            assert {"401", "429", "503"} <= set(errors) or {"401", "429", "529"} <= set(errors), f"{method} {path}"
    # What the gateway renders validates against the documented shape.
    for error in (invalid_api_key(), service_unavailable(), GatewayError(400, "Bad.", code="invalid_value", param="n")):
        jsonschema.validate(json.loads(error.rendered()), component(document, "Error"))
    responses = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "Retry-After" in responses["503"]["headers"]


def test_auth_is_stated_for_each_kind_of_endpoint(document):
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {**schemes["ApiKeyHeader"], "type": "apiKey", "in": "header", "name": "x-api-key"}
    paths = document["paths"]
    assert paths["/v1/chat/completions"]["post"]["security"] == [{"ApiKey": []}, {"ApiKeyHeader": []}]
    assert paths["/v1/keys"]["get"]["security"] == [{"Session": []}]
    assert paths["/v1/auth/login"]["post"]["security"] == []
    assert paths["/healthz"]["get"]["security"] == []


def test_admin_endpoints_are_marked_as_operator_endpoints(document):
    admin = [(m, p, op) for m, p, op in operations(document) if p.startswith("/v1/admin/")]
    assert len(admin) >= 7
    for method, path, operation in admin:
        assert OPERATOR_TAG in operation["tags"] and operation["security"] == [{"AdminToken": []}], f"{method} {path}"
        assert operation["description"].startswith("**Operator endpoint**")
    for method, path, operation in operations(document):
        if not path.startswith("/v1/admin/"):
            assert OPERATOR_TAG not in operation.get("tags", ()), f"{method} {path} is not an operator endpoint"


def test_documented_answers_match_what_the_code_builds(document):
    """Where an answer is built by plain code, it validates against its documented model."""
    live = RegisteredFineTune("support", 3, "smollm2-135m", "sha256:ab", "/store/x", None, "live", "admin-api", 1, 8)
    jsonschema.validate(finetune_fields(live), component(document, "FineTune"))
    counters = dict(zip(COUNTERS, range(1, len(COUNTERS) + 1)))  # as UsageStore.month reads them
    month = usage_view("2030-01", {**counters, "by_mode": {"fast": counters}})
    spend = MonthSpend("2030-01", 1_500_000, 250_000, 2_000_000, 250_000)
    limits = Limits(rpm=10, key_budget_micro=5_000_000, models=frozenset({"private"}))
    for prefix in ("neuro_abcd1234", None):  # with an API key, and with a session token
        jsonschema.validate({"object": "usage", "account_id": "acct_1", "data": [month],
                             "budgets": budget_view(limits, spend, prefix)}, component(document, "UsageDocument"))
    with pytest.raises(jsonschema.ValidationError):  # the check can fail: a field of the wrong type
        jsonschema.validate({**finetune_fields(live), "version": "3"}, component(document, "FineTune"))


async def test_openapi_json_and_docs_are_served(api, document):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://gateway") as client:
        served = await client.get("/openapi.json")
        page = await client.get("/docs")
    assert served.status_code == 200 and served.json() == json.loads(json.dumps(document))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for method, path, operation in operations(document):
        assert f">{method.upper()}</span> <code>{path}</code>" in html, f"{method} {path} missing from /docs"
    for name in document["components"]["schemas"]:
        assert f'id="schema-{name}"' in html
    assert "Operator endpoint" in html and "x-api-key" in html
    # Self-contained: nothing is loaded from elsewhere (the gateway's users may have no internet).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "<script src" not in html
