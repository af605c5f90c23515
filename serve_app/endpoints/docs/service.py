"""``GET /docs``: the OpenAPI document as one self-contained HTML page, rendered here (no CDN, no
external script or style: the gateway's users may have no internet)."""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

from fastapi import FastAPI

from serve_app.openapi import build_document

METHODS = ("get", "post", "put", "patch", "delete")
_REF = "#/components/schemas/"
_AUTH_LABELS = {"ApiKey": "API key (<code>Authorization: Bearer neuro_...</code>)",
                "ApiKeyHeader": "API key (<code>x-api-key</code>)",
                "Session": "session token (<code>Authorization: Bearer</code>, from <code>POST /v1/auth/login</code>)",
                "AdminToken": "admin token (<code>Authorization: Bearer</code>)",
                "StripeSignature": "Stripe's <code>Stripe-Signature</code>"}

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#1d2330}
code,pre{font:13px/1.4 ui-monospace,monospace}pre{background:#f4f5f7;padding:.6rem;overflow:auto}
section.op{border-top:1px solid #d8dbe2;padding:.5rem 0 1rem}h3 code{font-size:16px}
.m{display:inline-block;min-width:4.2em;text-align:center;color:#fff;border-radius:3px;padding:0 .3em;font-size:13px}
.get{background:#2f7d4f}.post{background:#2d5fa8}.put{background:#8a5a12}.delete{background:#a3302a}.patch{background:#6b4fa0}
.tag{font-size:12px;background:#eee;border-radius:3px;padding:0 .4em}.operator{background:#fbe3c4}
table{border-collapse:collapse;margin:.3rem 0}td,th{border:1px solid #d8dbe2;padding:.2rem .5rem;vertical-align:top;text-align:left}
details{margin:.3rem 0}
"""


def _text(markdown: str) -> str:
    """Escaped text with the little markdown the descriptions use: `code` and **bold**."""
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(markdown))
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", html)


def _anchor(method: str, path: str) -> str:
    return "op-" + re.sub(r"[^a-zA-Z0-9]+", "-", f"{method}{path}").strip("-")


def _schema_link(name: str) -> str:
    return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'


def _type(schema: Any) -> str:
    """A schema's type in a few words, models as links."""
    if not isinstance(schema, dict):
        return ""
    if "$ref" in schema:
        return _schema_link(schema["$ref"].removeprefix(_REF))
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return " | ".join(_type(member) for member in schema[union])
    if "const" in schema:
        return f"<code>{escape(json.dumps(schema['const']))}</code>"
    if "enum" in schema:
        return " | ".join(f"<code>{escape(json.dumps(v))}</code>" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {})) or 'any'}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return escape(str(kind))


def _fields(schema: dict, schemas: dict) -> str:
    """A model's fields as a table (a ``$ref`` is followed once)."""
    if "$ref" in schema:
        schema = schemas.get(schema["$ref"].removeprefix(_REF), {})
    properties = schema.get("properties")
    if not properties:
        return ""
    required = set(schema.get("required", ()))
    rows = "".join(
        f"<tr><td><code>{escape(name)}</code>{' <b>required</b>' if name in required else ''}</td>"
        f"<td>{_type(field)}</td><td>{_text(field.get('description', ''))}</td></tr>"
        for name, field in properties.items())
    return f"<table><tr><th>field</th><th>type</th><th>about</th></tr>{rows}</table>"


def _auth(operation: dict) -> str:
    alternatives = operation.get("security")
    if not alternatives:
        return "none"
    return " or ".join(" and ".join(_AUTH_LABELS.get(name, escape(name)) for name in each) for each in alternatives)


def _content(content: dict) -> str:
    parts = []
    for media, body in content.items():
        schema = body.get("schema", {})
        shown = _type(schema)
        if media == "text/event-stream":  # one event: name its data's models
            data = schema.get("properties", {}).get("data", {})
            json_data = next((d for d in data.get("anyOf", [data]) if "contentSchema" in d), {})
            shown = "events" + (f"; data: {_type(json_data['contentSchema'])}" if json_data else "")
            shown += "".join(f", or <code>{escape(d['const'])}</code>" for d in data.get("anyOf", ()) if "const" in d)
        parts.append(f"<code>{escape(media)}</code> {shown}")
    return "<br>".join(parts)


def _operation(method: str, path: str, operation: dict, schemas: dict) -> str:
    tags = "".join(f' <span class="tag {escape(t)}">{escape(t)}</span>' for t in operation.get("tags", ()))
    html = [f'<section class="op" id="{_anchor(method, path)}"><h3><span class="m {method}">{method.upper()}</span> '
            f'<code>{escape(path)}</code>{tags}</h3>',
            f"<p>{_text(operation.get('summary', ''))}</p>"]
    if operation.get("description"):
        html.append(f"<p>{_text(operation['description'])}</p>")
    html.append(f"<p><b>Auth:</b> {_auth(operation)}</p>")
    for parameter in operation.get("parameters", ()):
        html.append(f"<p><b>{escape(parameter['in'])} parameter</b> <code>{escape(parameter['name'])}</code>: "
                    f"{_type(parameter.get('schema', {}))}</p>")
    body = operation.get("requestBody")
    if body:
        html.append(f"<p><b>Request body</b>{'' if body.get('required') else ' (optional)'}: "
                    f"{_content(body.get('content', {}))}</p>")
        for media in body.get("content", {}).values():
            html.append(_fields(media.get("schema", {}), schemas))
    rows = "".join(f"<tr><td>{escape(code)}</td><td>{_text(response.get('description', ''))}</td>"
                   f"<td>{_content(response.get('content', {}))}</td></tr>"
                   for code, response in operation.get("responses", {}).items())
    html.append(f"<table><tr><th>status</th><th>meaning</th><th>body</th></tr>{rows}</table></section>")
    return "".join(html)


def _schema_block(name: str, schema: dict) -> str:
    text = escape(json.dumps(schema, indent=2, ensure_ascii=False))
    linked = re.sub(r"&quot;#/components/schemas/([^&]+)&quot;",
                    lambda m: f'&quot;<a href="#schema-{m[1]}">#/components/schemas/{m[1]}</a>&quot;', text)
    return f'<details id="schema-{escape(name)}"><summary><code>{escape(name)}</code></summary><pre>{linked}</pre></details>'


def render_html(document: dict) -> str:
    info, schemas = document.get("info", {}), document.get("components", {}).get("schemas", {})
    operations = [(method, path, item[method]) for path, item in document.get("paths", {}).items()
                  for method in METHODS if method in item]
    index = "".join(f'<li><a href="#{_anchor(m, p)}"><span class="m {m}">{m.upper()}</span> <code>{escape(p)}</code></a>'
                    f" {escape(op.get('summary', ''))}</li>" for m, p, op in operations)
    return "".join([
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(info.get('title', 'API'))}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(info.get('title', 'API'))} <small>{escape(str(info.get('version', '')))}</small></h1>",
        f"<pre>{escape(info.get('description', ''))}</pre>",
        '<p>The machine-readable document: <a href="/openapi.json">/openapi.json</a> (OpenAPI '
        f"{escape(document.get('openapi', ''))}).</p>",
        f"<h2>Endpoints</h2><ul>{index}</ul>",
        *(_operation(m, p, op, schemas) for m, p, op in operations),
        "<h2>Schemas</h2>", *(_schema_block(name, schema) for name, schema in sorted(schemas.items())),
        "</body></html>"])


def cached_document(api: FastAPI) -> dict:
    """The app's document, built once per app (its routes do not change once it serves)."""
    document = getattr(api.state, "openapi_document", None)
    if document is None:
        document = api.state.openapi_document = build_document(api)
    return document


def cached_page(api: FastAPI) -> str:
    page = getattr(api.state, "openapi_page", None)
    if page is None:
        page = api.state.openapi_page = render_html(cached_document(api))
    return page
