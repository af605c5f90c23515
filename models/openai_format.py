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
from models.engine import Sampling


class ChatTokenizer(Protocol):
    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


def _text(content: str | list[dict[str, str]]) -> str:
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def conversation(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages as chat templates expect them ("developer" is OpenAI's newer "system")."""
    return [{"role": "system" if m["role"] == "developer" else m["role"], "content": _text(m["content"])}
            for m in messages]


def prompt_token_ids(tokenizer: ChatTokenizer, messages: list[dict[str, Any]]) -> list[int]:
    """The prompt exactly as the model sees it: its own chat template, then its tokenizer."""
    text = tokenizer.apply_chat_template(conversation(messages), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def context_overflow(model: str, prompt_tokens: int, max_tokens: int | None, max_model_len: int) -> GatewayError:
    asked = f"{prompt_tokens} in the messages" + (f" + {max_tokens} for the completion" if max_tokens else "")
    return GatewayError(
        400, f"This model's maximum context length is {max_model_len} tokens; the request needs "
             f"{asked}. Shorten the messages or lower max_tokens.",
        code="context_length_exceeded", param="messages",
    )


def sampling_for(body: dict[str, Any], model: str, prompt_tokens: int, max_model_len: int,
                 default_max_tokens: int) -> Sampling:
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


def chunk(header: AnswerHeader, delta: dict[str, str], finish_reason: str | None = None) -> bytes:
    body = {**header.fields("chat.completion.chunk"),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    return encode(json.dumps(body))


def usage_chunk(header: AnswerHeader, usage: Usage, cost_units: str) -> bytes:
    """The usage-only final chunk of ``stream_options.include_usage``, priced."""
    payload = {**header.fields("chat.completion.chunk"), "choices": [], "usage": usage.as_openai()}
    return encode(priced_json(payload, cost_units).decode())


def completion(header: AnswerHeader, text: str, finish_reason: str, usage: Usage, cost_units: str) -> bytes:
    payload = {**header.fields("chat.completion"),
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                            "logprobs": None, "finish_reason": finish_reason}],
               "usage": usage.as_openai()}
    return priced_json(payload, cost_units)
