"""Request bodies: strict pydantic models, and validation errors in the endpoint's error shape.

Strict on purpose: a parameter NeuroAPI would not honour is a 400 that names it, never silently
dropped, and a value of the wrong JSON type is a 400 too (no coercion: ``"10"`` is not a
number, ``1`` is not ``true``; an integer where a number is expected is fine)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import GatewayError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


Model = TypeVar("Model", bound=BaseModel)


def parse_body(model: type[Model], raw: bytes) -> Model:
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise _as_gateway_error(error) from None


def _is_union_member(part: str | int) -> bool:
    """Pydantic's loc names a union's member by its type ("str", "list[str]",
    "constrained-str"); a field never has such a name."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool")
                                      or part.startswith("constrained-") or "[" in part)


# The tags of discriminated unions (a message's role, a content part's type): pydantic puts the
# tag in an error's loc right after the list index, where the caller's JSON has no such key.
UNION_TAGS = frozenset({"system", "user", "assistant", "tool", "text", "image_url", "refusal", "thinking",
                        "redacted_thinking",
                        # Anthropic's content blocks (/v1/messages)
                        "image", "document", "tool_use", "tool_result"})


def _is_tag(loc: tuple, index: int) -> bool:
    return 0 < index and isinstance(loc[index - 1], int) and loc[index] in UNION_TAGS


def _as_gateway_error(error: ValidationError) -> GatewayError:
    errors = error.errors(include_url=False, include_input=False)
    # A union (``stop``, ``content``) reports one error per member: the deepest one says most.
    first = max((e for e in errors if e["loc"][:1] == errors[0]["loc"][:1]), key=lambda e: len(e["loc"]))
    loc = first["loc"]
    where = ".".join(str(part) for index, part in enumerate(loc)
                     if not _is_union_member(part) and not _is_tag(loc, index))
    if first["type"] == "json_invalid":
        return GatewayError(400, "The request body is not valid JSON.", code="invalid_json")
    if first["type"] == "model_type" and not first["loc"]:
        return GatewayError(400, "The request body must be a JSON object.", code="invalid_json")
    if first["type"] == "extra_forbidden":
        return GatewayError(
            400, f"Unsupported parameter: '{where}' is not supported by NeuroAPI.",
            code="unsupported_parameter", param=where,
        )
    if first["type"] == "missing":
        return GatewayError(400, f"Missing required parameter: '{where}'.",
                            code="missing_required_parameter", param=where)
    message = first["msg"].removeprefix("Value error, ")
    return GatewayError(400, f"Invalid value for '{where or 'body'}': {message}.",
                        code="invalid_value", param=where or None)
