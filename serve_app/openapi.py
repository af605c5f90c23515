"""The served OpenAPI 3.1 document, built from the same pydantic models the endpoints validate with.

Routers read their bodies themselves (``read_body`` + ``parse_body``), so FastAPI knows no schema.
Each route says what it takes and answers with ``**documented(...)`` on its decorator: plain
decorator kwargs that change nothing at run time. A model is named in the route's OpenAPI entry
by a placeholder ``$ref``; ``build_document`` imports the named models, generates their JSON
schemas together (pydantic's ``models_json_schema``, so shared and clashing nested names are
resolved once) and points every placeholder at its component."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

Auth = Literal["api_key", "session", "admin", "session_or_api_key", "stripe"]
ErrorShape = Literal["openai", "anthropic"]
OPERATOR_TAG = "operator"
COMPONENTS = "#/components/schemas/{model}"
_PLACEHOLDER = "neuroapi-model:"  # neuroapi-model:<mode>:<module>:<qualname>


class ErrorDetail(BaseModel):
    message: str = Field(description="For the caller; never carries prompt text, secrets or an upstream's body.")
    type: str = Field(description="invalid_request_error, permission_error, server_error, ...")
    param: str | None = Field(description="The request field at fault, when there is one.")
    code: str | None = Field(description="A stable machine-readable code (invalid_api_key, model_not_found, ...).")


class Error(BaseModel):
    """NeuroAPI's (and OpenAI's) error shape, on every endpoint outside the /v1/messages family."""

    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, not_found_error, "
                                  "request_too_large, rate_limit_error, api_error, overloaded_error")
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error shape, on the /v1/messages family."""

    type: Literal["error"]
    error: AnthropicErrorDetail


# What each status means on this gateway, for the document's error responses.
STATUS_TEXT = {
    400: "The request is malformed: not JSON, a missing or unsupported parameter, or an invalid value "
         "(`param` names the field).",
    401: "Missing or invalid credentials; repeated failures from one address are refused for a while (429).",
    402: "The account's billing does not allow calls (free allowance spent without a subscription, or past due).",
    403: "The account's scope forbids this model or provider, or the admin API is off.",
    404: "No such model, mode, key or fine-tune; or the feature is off on this gateway.",
    408: "The request body did not arrive in time.",
    409: "The change conflicts with the current state.",
    413: "The request body is larger than the gateway accepts.",
    429: "Too many requests (failed authentication from this address, sign-ups, or the upstream's rate limit); "
         "see Retry-After.",
    500: "The gateway failed on this request; quote its X-Request-Id to support.",
    502: "The upstream provider failed or sent what cannot be relayed.",
    503: "Temporarily unavailable (data store unreachable, a model's queue full, bounded work at its limit); "
         "see Retry-After.",
    504: "The upstream provider timed out.",
    529: "Overloaded (Anthropic's status for what the gateway otherwise answers with 503); see Retry-After.",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}

SECURITY_SCHEMES = {
    "ApiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "neuro_...",
               "description": "An API key (`neuro_...`, from `POST /v1/keys` or `neuroapi keys create`): "
                              "`Authorization: Bearer neuro_...`."},
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key",
                     "description": "The same API key in `x-api-key` (as Anthropic's SDK sends it)."},
    "Session": {"type": "http", "scheme": "bearer",
                "description": "A session token from `POST /v1/auth/login`: `Authorization: Bearer <token>`."},
    "AdminToken": {"type": "http", "scheme": "bearer",
                   "description": "The operator's admin token (`NEUROAPI_ADMIN_TOKEN` on the gateway)."},
    "StripeSignature": {"type": "apiKey", "in": "header", "name": "Stripe-Signature",
                        "description": "Stripe's signature of the webhook payload."},
}
_SECURITY: dict[str, list[dict[str, list]]] = {
    "api_key": [{"ApiKey": []}, {"ApiKeyHeader": []}],
    "session": [{"Session": []}],
    "admin": [{"AdminToken": []}],
    "session_or_api_key": [{"Session": []}, {"ApiKey": []}, {"ApiKeyHeader": []}],
    "stripe": [{"StripeSignature": []}],
}


@dataclass(frozen=True)
class SSE:
    """A streamed answer (``text/event-stream``): what its events are, the model (or models) of
    one event's JSON ``data``, and the literal ``data`` that ends the stream, if any ("[DONE]")."""

    description: str
    event: type[BaseModel] | tuple[type[BaseModel], ...] | None = None
    done: str | None = None


def _event_schema(stream: SSE, error_model: type[BaseModel]) -> dict[str, Any]:
    """One server-sent event, as OpenAPI 3.2 reads a ``text/event-stream`` item (and schemathesis
    checks each event): ``data`` is JSON text of one of the event models, or the error shape (a
    failure after the stream started), or the closing literal."""
    data: dict[str, Any] = {"type": "string"}
    if stream.event is not None:
        models = stream.event if isinstance(stream.event, tuple) else (stream.event,)
        data = {"type": "string", "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [model_ref(m, "serialization") for m in (*models, error_model)]}}
    if stream.done is not None:
        data = {"anyOf": [{"const": stream.done}, data]}
    return {"type": "object", "description": "One server-sent event.", "required": ["data"],
            "properties": {"event": {"type": "string"}, "data": data, "id": {"type": "string"},
                           "retry": {"type": "integer"}}}


def model_ref(model: type[BaseModel], mode: Literal["validation", "serialization"]) -> dict[str, str]:
    """A placeholder ``$ref`` to ``model``'s component, resolved by ``build_document``."""
    return {"$ref": f"{_PLACEHOLDER}{mode}:{model.__module__}:{model.__qualname__}"}


def _json(model: type[BaseModel] | None) -> dict[str, Any]:
    return {"application/json": {"schema": model_ref(model, "serialization") if model else {"type": "object"}}}


def documented(summary: str, *, request: type[BaseModel] | None = None, response: type[BaseModel] | None = None,
               stream: SSE | str | None = None, status: int = 200, errors: Iterable[int] = (),
               auth: Auth | None = None, tags: Sequence[str] = (), description: str | None = None,
               error_shape: ErrorShape = "openai", request_required: bool = True,
               request_content_type: str = "application/json", response_media_type: str = "application/json",
               response_description: str = "Success.") -> dict:
    """Decorator kwargs (summary, description, tags, responses, openapi_extra) that document a route.
    ``status`` must equal the decorator's ``status_code``; 500, and with a credential 401, 429
    and 503, are added to ``errors``."""
    if isinstance(stream, str):
        stream = SSE(stream)
    content: dict[str, Any] = {}
    if response_media_type != "application/json":
        content[response_media_type] = {"schema": {"type": "string"}}
    elif response is not None or stream is None:
        content = _json(response)
    error_model = AnthropicError if error_shape == "anthropic" else Error
    if stream is not None:
        content["text/event-stream"] = {"schema": _event_schema(stream, error_model)}
        response_description += f" With `stream: true`, server-sent events: {stream.description}"
    responses: dict[int | str, Any] = {status: {"description": response_description, "content": content}}
    # Every route can fail (500); a credential check can fail (401), be refused after repeated
    # failures from the address (429) or find the data store away (503).
    statuses = set(errors) | {500} | ({401, 429, 503} if auth in ("api_key", "session", "admin",
                                                                 "session_or_api_key") else set())
    if error_shape == "anthropic" and 503 in statuses:  # Anthropic's overloaded_error
        statuses = (statuses - {503}) | {529}
    for code in sorted(statuses):
        entry: dict[str, Any] = {"description": STATUS_TEXT.get(code, "Error."), "content": _json(error_model)}
        if code in (429, 503, 529):
            entry["headers"] = _RETRY_AFTER
        responses[code] = entry
    extra: dict[str, Any] = {"security": _SECURITY[auth] if auth else []}
    if request is not None:
        extra["requestBody"] = {"required": request_required,
                                "content": {request_content_type: {"schema": model_ref(request, "validation")}}}
    tag_list = list(tags)
    if auth == "admin":
        tag_list.append(OPERATOR_TAG)
        description = ("**Operator endpoint** (admin token; not for API callers). " + (description or "")).strip()
    kwargs: dict[str, Any] = {"summary": summary, "tags": tag_list, "responses": responses, "openapi_extra": extra}
    if description:
        kwargs["description"] = description
    return kwargs


def _placeholders(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_PLACEHOLDER):
            found.add(ref)
        for value in node.values():
            _placeholders(value, found)
    elif isinstance(node, list):
        for value in node:
            _placeholders(value, found)


def _replace(node: Any, refs: dict[str, dict]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref in refs:
            return {**refs[ref], **{k: v for k, v in node.items() if k != "$ref"}}
        return {key: _replace(value, refs) for key, value in node.items()}
    if isinstance(node, list):
        return [_replace(value, refs) for value in node]
    return node


def _model(placeholder: str) -> tuple[type[BaseModel], str]:
    mode, module, qualname = placeholder.removeprefix(_PLACEHOLDER).split(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target, mode


def _drop_fastapi_defaults(document: dict, api: FastAPI) -> None:
    """FastAPI adds a 422 to routes with path parameters, and a bare success response at the
    decorator's status_code: this gateway answers a validation failure with 400, and each
    documented route describes its own success."""
    own = {(route.path_format, method.lower()): {str(code) for code in route.responses}
           for route in api.routes if isinstance(route, APIRoute) for method in route.methods}
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            if own.get((path, method)):
                for code in [code for code in responses if code not in own[(path, method)]]:
                    del responses[code]
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _short_names(document: dict) -> dict:
    """Pydantic names clashing models by their whole module path
    (``serve_app__endpoints__chat__schema__Tool``): name them by family instead (``chat.Tool``)."""
    schemas = document["components"]["schemas"]
    renames = {}
    for name in schemas:
        parts = name.split("__")
        if len(parts) > 2:
            short = f"{parts[2] if parts[:2] == ['serve_app', 'endpoints'] else parts[-2]}.{parts[-1]}"
            if short not in schemas and short not in renames.values():
                renames[name] = short
    if not renames:
        return document
    text = json.dumps(document)
    for old, new in renames.items():
        text = text.replace(json.dumps(COMPONENTS.format(model=old)), json.dumps(COMPONENTS.format(model=new)))
    renamed = json.loads(text)
    renamed["components"]["schemas"] = {renames.get(name, name): schema
                                        for name, schema in renamed["components"]["schemas"].items()}
    return renamed


def build_document(api: FastAPI, version: str = "1") -> dict:
    """The whole OpenAPI 3.1 document of ``api``."""
    document = get_openapi(title=api.title, version=version, openapi_version="3.1.0", routes=api.routes,
                           description=DESCRIPTION)
    _drop_fastapi_defaults(document, api)
    found: set[str] = set()
    _placeholders(document, found)
    ordered = sorted(found)
    keyed = [_model(placeholder) for placeholder in ordered]
    refs_by_key, definitions = models_json_schema(keyed, ref_template=COMPONENTS)
    refs = {placeholder: refs_by_key[key] for placeholder, key in zip(ordered, keyed)}
    document = _replace(document, refs)
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(definitions.get("$defs", {}))
    document = _short_names(document)
    components = document["components"]
    components["securitySchemes"] = SECURITY_SCHEMES
    document["tags"] = [{"name": OPERATOR_TAG, "description": "Operator endpoints (the admin API): they need the "
                         "gateway's admin token and are not part of the API callers use."}]
    return document


DESCRIPTION = """NeuroAPI: one gateway to hosted and in-house language models.

Authentication: API endpoints take an API key (`Authorization: Bearer neuro_...` or `x-api-key`);
account endpoints (`/v1/keys`, `/v1/account`, `/v1/billing`) take a session token from
`POST /v1/auth/login`; `/v1/admin/*` are operator endpoints that take the admin token.

Errors: `{"error": {"message", "type", "param", "code"}}` with the HTTP status, except on the
`/v1/messages` family, which answers in Anthropic's shape `{"type": "error", "error": {"type", "message"}}`.
Every answer carries an `X-Request-Id`."""
