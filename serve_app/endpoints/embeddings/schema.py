"""OpenAI's Embeddings API on the wire: the request (``input`` as a string, strings, a token array
or token arrays; ``model``; ``encoding_format``; ``dimensions``; ``user``) with OpenAI's limits, and
the answer, written from the backend's float32 vectors.

Strict like the chat schema: an unknown parameter is a 400 that names it; no coercion. ``mode`` is
not taken: vectors from different models cannot be compared, so no fallback may answer for a model
(``actors.routing.table.embedding_backend``)."""

from __future__ import annotations

import base64
import sys
from array import array
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from core.backend import Embeddings
from core.money import json_bytes, priced_json
from models.pooling import MAX_INPUTS
from serve_app.endpoints.parsing import Strict, parse_body

MAX_TOKEN_ID = 2**31 - 1
MAX_DIMENSIONS = 65_536
_INPUT_SHAPES = "a string, an array of strings, an array of token ids, or an array of token arrays"
_TOKEN = {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID}
_INPUT_SCHEMA = {"anyOf": [
    {"type": "string", "minLength": 1},
    {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": MAX_INPUTS},
    {"type": "array", "items": _TOKEN, "minItems": 1},
    {"type": "array", "items": {"type": "array", "items": _TOKEN, "minItems": 1}, "minItems": 1, "maxItems": MAX_INPUTS},
]}


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_ID


class EmbeddingRequest(Strict):
    model: str = Field(min_length=1, max_length=256)
    input: Any = Field(  # checked by _inputs: always a list once parsed
        description="Text to embed: " + _INPUT_SHAPES + f" (at most {MAX_INPUTS} inputs, none empty; each within "
                    "the model's context, 8192 tokens for OpenAI's models; 300,000 tokens in all). Token ids are "
                    "the model's own tokenizer's.", json_schema_extra=_INPUT_SCHEMA)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=MAX_DIMENSIONS)
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input")
    @classmethod
    def _inputs(cls, value: Any) -> list[str] | list[list[int]]:
        """The inputs as a list: strings, or token arrays (one string or array becomes a list of one)."""
        if isinstance(value, str) or (isinstance(value, list) and value and all(map(_is_token, value))):
            value = [value]
        if not isinstance(value, list) or not value:
            raise ValueError(f"it must be {_INPUT_SHAPES}")
        if len(value) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per request, got {len(value)}")
        if all(isinstance(item, str) for item in value):
            empty = next((index for index, item in enumerate(value) if not item), None)
            if empty is not None:
                raise ValueError(f"input {empty} is an empty string, which cannot be embedded")
            return value
        if all(isinstance(item, list) for item in value):
            for index, tokens in enumerate(value):
                if not tokens or not all(map(_is_token, tokens)):
                    raise ValueError(f"token array {index} must be a non-empty array of token ids (integers from 0)")
            return value
        raise ValueError(f"it must be {_INPUT_SHAPES}, not a mix")

    def upstream_body(self) -> dict[str, Any]:
        """What a backend reads: ``input`` (a list), and ``dimensions`` and ``user`` when set. The
        encoding is the ingress's business: backends answer float32 vectors."""
        return self.model_dump(exclude_none=True, exclude={"model", "encoding_format"})

    @property
    def token_arrays(self) -> list[list[int]]:
        return [] if isinstance(self.input[0], str) else self.input


class EmbeddingObject(BaseModel):
    object: Literal["embedding"]
    index: int = Field(description="The input's position in the request.")
    embedding: list[float] | str = Field(description="The vector: numbers, or with encoding_format base64 its "
                                                     "float32 little-endian values, base64-encoded.")


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int = Field(description="Every input's tokens.")
    total_tokens: int
    cost_units: float = Field(description="What the call costs, exactly (1 cost_unit = US$0.000001); also in "
                                          "the X-NeuroAPI-Cost-Units header.")


class EmbeddingsResponse(BaseModel):
    """OpenAI's answer (documentation model: the service writes it with ``embeddings_answer``)."""

    object: Literal["list"]
    data: list[EmbeddingObject]
    model: str
    usage: EmbeddingsUsage


def parse_embedding_request(raw: bytes) -> EmbeddingRequest:
    return parse_body(EmbeddingRequest, raw)


def _floats(row: bytes) -> list[float]:
    """float32 little-endian as Python floats: each exactly the float32 value, so the caller
    reads back the very vector the model produced."""
    values = array("f", row)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


def embeddings_answer(embeddings: Embeddings, model: str, encoding_format: str, cost_units: str | None) -> bytes:
    """OpenAI's ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
    "model", "usage": {"prompt_tokens", "total_tokens"}}``, plus ``usage.cost_units``. base64 is
    the float32 little-endian bytes themselves, as OpenAI sends them."""
    size = 4 * embeddings.dimensions
    data = []
    for index in range(embeddings.count):
        row = embeddings.vectors[index * size:(index + 1) * size]
        vector: Any = base64.b64encode(row).decode() if encoding_format == "base64" else _floats(row)
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = embeddings.usage.prompt_tokens
    payload = {"object": "list", "data": data, "model": model,
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return json_bytes(payload) if cost_units is None else priced_json(payload, cost_units)
