"""Hypothesis strategies for request bodies: a valid example of every request schema, arbitrary
JSON, and near-valid mutations (shared by the schema fuzz and the gateway fuzz)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from serve_app.endpoints.admin_finetunes.schema import FineTuneDeploy
from serve_app.endpoints.admin_scopes.schema import AccountRef, AccountScopeChange, ScopeChange
from serve_app.endpoints.auth.schema import Credentials
from serve_app.endpoints.chat.schema import ChatCompletionRequest
from serve_app.endpoints.keys.schema import NewKey

# Awkward scalars: huge and negative integers, floats at the edges, strings that look like
# other types, NUL, surrogate-free unicode.
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.sampled_from([0, 1, -1, 2**31, 2**63, 10**30, -(10**40)]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, -0.0, 5e-324, 0.5, 2.0000001]),
    st.text(max_size=40), st.sampled_from(["", "10", "0.5", "yes", "true", "null", "\x00", "user", "text"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)

VALID: dict[type[BaseModel], dict[str, Any]] = {
    ChatCompletionRequest: {
        "model": "gpt-4o-mini", "mode": "fast",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "me"}],
        "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 10, "temperature": 0.5,
        "top_p": 1, "stop": ["\n"], "n": 1, "presence_penalty": 0, "frequency_penalty": 0.1, "seed": 7,
        "user": "u-1", "logprobs": False,
    },
    Credentials: {"email": "you@example.com", "password": "correct horse battery"},
    NewKey: {"name": "laptop"},
    ScopeChange: {"in_house_only": True, "excluded_providers": ["openai"]},
    FineTuneDeploy: {"path": "/tmp/adapter", "base": "smollm2-135m-instruct", "name": "bot",
                     "account": "you@example.com"},
    AccountRef: {"email": "you@example.com"},
    AccountScopeChange: {"email": "you@example.com", "in_house_only": False, "excluded_providers": []},
}
SCHEMAS = list(VALID)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value a mutation can touch."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


@st.composite
def near_valid(draw, schema: type[BaseModel], valid: dict[str, Any] | None = None) -> Any:
    """A valid body (``VALID[schema]`` unless given) with one to three mutations: a value
    replaced, a key dropped or added, a list item duplicated."""
    body = json.loads(json.dumps(valid or VALID[schema]))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(body)))
        if not where:
            if draw(st.booleans()):
                body = draw(json_values)
            continue
        parent = body
        try:
            for part in where[:-1]:
                parent = parent[part]
            last = where[-1]
            action = draw(st.sampled_from(["replace", "drop", "add", "duplicate"]))
            if action == "replace":
                parent[last] = draw(json_values)
            elif action == "drop":
                del parent[last]
            elif action == "add" and isinstance(parent, dict):
                parent[draw(st.text(max_size=12))] = draw(json_values)
            elif action == "duplicate" and isinstance(parent, list):
                parent.append(parent[last])
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation changed the shape under this path
    return body


def encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


