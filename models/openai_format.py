"""OpenAI's Chat Completions wire format for in-house models: from a validated request body to
the prompt's token ids and sampling parameters, and from engine deltas to OpenAI's answers.

Plain functions over a tokenizer, so the rules (context length, defaults, chunk shapes) are
unit-tested without an engine or Ray."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

from core.backend import Usage
from core.errors import GatewayError
from core.money import priced_json
from core.sse import encode
from models import tool_calls as tools
from models.engine import Sampling, StructuredOutput, TokenLogprob


class ChatTokenizer(Protocol):
    def apply_chat_template(self, conversation: list[dict[str, Any]], **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


# Fields that would change the answer, which an in-house engine has no way to honour (at any
# value but these). Hints with no effect on the answer here pass: ``user``, ``safety_identifier``
# and ``metadata`` (nothing upstream to tag), ``prompt_cache_key``/``prompt_cache_retention``
# (vLLM caches prefixes by itself).
_DEFAULT_ONLY = {"verbosity": ("medium",), "service_tier": ("auto", "default")}


def unsupported(body: dict[str, Any]) -> str | None:
    """Why an in-house model cannot honour ``body`` beyond its capabilities (routing asks first,
    so a mode skips it), or None."""
    for name, accepted in _DEFAULT_ONLY.items():
        if name in body and body[name] not in accepted:
            return f"'{name}' {body[name]!r} is not supported by in-house models"
    return None


def refuse_images(messages: list[dict[str, Any]]) -> None:
    """In-house models have no vision: an image part is a 400 that names it, never silently dropped."""
    for m_index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            for p_index, part in enumerate(content):
                if part.get("type", "text") != "text":
                    raise GatewayError(400, f"Content parts of type '{part.get('type')}' are not supported by "
                                            "this model (in-house models read text only).",
                                       code="unsupported_content", param=f"messages[{m_index}].content[{p_index}]")


def conversation(messages: list[dict[str, Any]], native_tools: bool = False) -> list[dict[str, Any]]:
    """Messages as chat templates expect them ("developer" is OpenAI's newer "system").

    Tool turns: with ``native_tools`` (a template that takes tools) as the template's own
    ``tool_calls`` and "tool" messages; otherwise as text, so any template renders them: an
    assistant's calls as "[call <id>: <name>(<arguments>)]" lines after its text, and the tool
    results that follow it as one user turn of "[result of <id>]" sections (a user turn, as many
    templates know no "tool" role or insist on alternating roles)."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        role, text = message["role"], _text(message.get("content"))
        calls = message.get("tool_calls") or []
        if role == "developer":
            role = "system"
        if native_tools:
            turn: dict[str, Any] = {"role": role, "content": text}
            if calls:
                turn["tool_calls"] = [tools.template_tool_call(call) for call in calls]
            if role == "tool":
                turn["tool_call_id"] = message.get("tool_call_id", "")
            turns.append(turn)
        elif role == "tool":
            result = tools.tool_result_as_text(message.get("tool_call_id", ""), text)
            if turns and turns[-1].get("tool_results"):
                turns[-1]["content"] += "\n\n" + result
            else:
                turns.append({"role": "user", "content": result, "tool_results": True})
        else:
            if calls:
                text = "\n".join(filter(None, [text, tools.tool_calls_as_text(calls)]))
            turns.append({"role": role, "content": text})
    for turn in turns:
        turn.pop("tool_results", None)
    return turns


def with_note(turns: list[dict[str, Any]], note: str | None) -> list[dict[str, Any]]:
    """The note in the system turn (after the caller's own instructions), or a system turn of its own."""
    if note is None:
        return turns
    if turns and turns[0]["role"] == "system":
        return [{**turns[0], "content": f"{turns[0]['content']}\n\n{note}"}, *turns[1:]]
    return [{"role": "system", "content": note}, *turns]


def prompt_token_ids(tokenizer: ChatTokenizer, messages: list[dict[str, Any]],
                     tool_definitions: list[dict[str, Any]] | None = None, note: str | None = None,
                     native_tools: bool = False) -> list[int]:
    """The prompt exactly as the model sees it: its own chat template, then its tokenizer.
    ``tool_definitions`` go to a template that takes tools (``native_tools``)."""
    extra = {"tools": tool_definitions} if native_tools and tool_definitions else {}
    turns = with_note(conversation(messages, native_tools), note)
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True, **extra)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def context_overflow(model: str, prompt_tokens: int, max_tokens: int | None, max_model_len: int) -> GatewayError:
    asked = f"{prompt_tokens} in the messages" + (f" + {max_tokens} for the completion" if max_tokens else "")
    return GatewayError(
        400, f"This model's maximum context length is {max_model_len} tokens; the request needs "
             f"{asked}. Shorten the messages or lower max_tokens.",
        code="context_length_exceeded", param="messages",
    )


def structured_output(body: dict[str, Any], forced: tools.ForcedTool | None = None) -> StructuredOutput | None:
    """The constraint on the completion: a forced tool call's schema (it wins over response_format,
    as in vLLM), else response_format's json_schema or json_object."""
    if forced is not None:
        return StructuredOutput(json.dumps(forced.schema))
    response_format = body.get("response_format") or {}
    kind = response_format.get("type", "text")
    if kind == "json_object":
        return StructuredOutput(None)
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        # No schema given: any JSON object is what OpenAI's json_schema without one allows.
        return StructuredOutput(json.dumps(schema) if schema is not None else None)
    return None


def sampling_for(body: dict[str, Any], model: str, prompt_tokens: int, max_model_len: int,
                 default_max_tokens: int, forced: tools.ForcedTool | None = None) -> Sampling:
    """The caller's sampling parameters; 400 when prompt + max_tokens cannot fit the context.

    Without max_tokens the completion may use what the context leaves, up to the catalog's
    default (a small model would otherwise ramble to the end of its context)."""
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    room = max_model_len - prompt_tokens
    if room <= 0 or (asked is not None and asked > room):
        raise context_overflow(model, prompt_tokens, asked, max_model_len)
    stop = body.get("stop") or ()
    return Sampling(
        max_tokens=asked if asked is not None else min(room, default_max_tokens),
        temperature=body.get("temperature", 1.0),
        top_p=body.get("top_p", 1.0),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        seed=body.get("seed"),
        presence_penalty=body.get("presence_penalty", 0.0),
        frequency_penalty=body.get("frequency_penalty", 0.0),
        structured=structured_output(body, forced),
        logprobs=(body.get("top_logprobs") or 0) if body.get("logprobs") else None,
        n=body.get("n") or 1,
    )


@dataclass(frozen=True, slots=True)
class AnswerHeader:
    """What every chunk and the completion of one answer share."""

    request_id: str
    model: str
    created: int
    fingerprint: str  # the engine that served it, e.g. "vllm-cpu"

    @classmethod
    def new(cls, request_id: str, model: str, engine: str) -> AnswerHeader:
        return cls(request_id, model, int(time.time()), engine)

    def fields(self, kind: str) -> dict[str, Any]:
        return {"id": f"chatcmpl-{self.request_id}", "object": kind, "created": self.created,
                "model": self.model, "system_fingerprint": self.fingerprint}


def logprobs_content(logprobs: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    """OpenAI's ``logprobs.content`` entries for some tokens."""
    return [{"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.token.encode()),
             "top_logprobs": [{"token": token, "logprob": logprob, "bytes": list(token.encode())}
                              for token, logprob in entry.top]}
            for entry in logprobs]


def chunk(header: AnswerHeader, delta: dict[str, Any], finish_reason: str | None = None, index: int = 0,
          logprobs: tuple[TokenLogprob, ...] = ()) -> bytes:
    choice_logprobs = {"content": logprobs_content(logprobs), "refusal": None} if logprobs else None
    body = {**header.fields("chat.completion.chunk"),
            "choices": [{"index": index, "delta": delta, "logprobs": choice_logprobs,
                         "finish_reason": finish_reason}]}
    return encode(json.dumps(body))


def usage_chunk(header: AnswerHeader, usage: Usage, cost_units: str) -> bytes:
    """The usage-only final chunk of ``stream_options.include_usage``, priced."""
    payload = {**header.fields("chat.completion.chunk"), "choices": [], "usage": usage.as_openai()}
    return encode(priced_json(payload, cost_units).decode())


def choice(index: int, message: dict[str, Any], finish_reason: str,
           logprobs: tuple[TokenLogprob, ...] | None = None) -> dict[str, Any]:
    """One choice of a completion; ``message`` holds content (and tool_calls)."""
    return {"index": index, "message": {"role": "assistant", "content": None, "refusal": None, **message},
            "logprobs": None if logprobs is None else {"content": logprobs_content(logprobs), "refusal": None},
            "finish_reason": finish_reason}


def completion(header: AnswerHeader, choices: list[dict[str, Any]], usage: Usage, cost_units: str) -> bytes:
    payload = {**header.fields("chat.completion"), "choices": choices, "usage": usage.as_openai()}
    return priced_json(payload, cost_units)
