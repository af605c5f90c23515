"""Tool calls on in-house models: what a request's ``tools`` / ``tool_choice`` ask of the model, and
how the model's text becomes OpenAI's ``tool_calls`` (whole, or streamed as fragments).

Two ways, by what the model can do:
- forced (``tool_choice`` "required" or a named function), on any model: the completion is
  constrained to JSON (structured outputs) — the named tool's arguments themselves, or, for
  "required" with several tools, ``{"name": <one of them>, "arguments": {...}}`` — and the tools
  are described to the model in a system note so it fills sensible arguments. One call per answer.
- auto (``tool_choice`` "auto", or absent with tools): only for a model whose catalog entry names
  a vLLM tool-call parser (``tool_parser``, e.g. "hermes"); its chat template gets ``tools`` and
  vLLM's parser finds the calls in the output, streamed and not.

Everything here works on text; a ``ChoiceText`` per choice turns the engine's text into message
fields and chunk deltas, so the model server handles plain, forced and parsed answers alike."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from core.errors import GatewayError

EMPTY_PARAMETERS = {"type": "object", "properties": {}}
# Where the arguments start in the wrapper object of "required" with several tools.
_WRAPPER_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _bad_request(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, param=param)


def _functions(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The request's function tools by name (each ``{"name", "description"?, "parameters"?}``)."""
    return {tool["function"]["name"]: tool["function"] for tool in body.get("tools") or []
            if tool.get("type", "function") == "function"}


@dataclass(frozen=True, slots=True)
class ForcedTool:
    """A call the model must make: ``name`` when the request fixed it, else one of ``names``."""

    names: tuple[str, ...]
    schema: dict[str, Any]  # what the completion's JSON must match

    @property
    def name(self) -> str | None:
        return self.names[0] if len(self.names) == 1 else None


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What the model is asked to do with the request's tools."""

    functions: dict[str, dict[str, Any]]
    forced: ForcedTool | None = None
    auto: bool = False  # the model may call tools; its tool-call parser finds them

    @property
    def uses_tools(self) -> bool:
        return self.forced is not None or self.auto


def tool_plan(body: dict[str, Any], model: str, tool_parser: str | None) -> ToolPlan:
    """The request's tools and tool_choice, read; 400 for a choice this model cannot honour."""
    functions = _functions(body)
    choice = body.get("tool_choice")
    if not functions:
        if choice not in (None, "none", "auto"):
            raise _bad_request("tool_choice needs tools", "tool_choice")
        return ToolPlan({})
    if choice == "none":
        return ToolPlan(functions)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name not in functions:
            raise _bad_request(f"tool_choice names the function '{name}', which is not in tools", "tool_choice")
        return ToolPlan(functions, forced=ForcedTool((name,), _parameters(functions[name])))
    if choice == "required":
        if len(functions) == 1:
            [(name, function)] = functions.items()
            return ToolPlan(functions, forced=ForcedTool((name,), _parameters(function)))
        return ToolPlan(functions, forced=ForcedTool(tuple(functions), _wrapper_schema(functions)))
    if tool_parser is None:
        raise _bad_request(f"The model '{model}' cannot choose tools itself (tool_choice 'auto'): its chat "
                           "template has no tool support. Send tool_choice 'required' or a named function.",
                           "tool_choice")
    return ToolPlan(functions, auto=True)


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    return function.get("parameters") or EMPTY_PARAMETERS


def _wrapper_schema(functions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"anyOf": [{"type": "object",
                       "properties": {"name": {"const": name}, "arguments": _parameters(function)},
                       "required": ["name", "arguments"], "additionalProperties": False}
                      for name, function in functions.items()]}


def tool_note(plan: ToolPlan) -> str | None:
    """The system note that describes the tools to a model that must call one."""
    if plan.forced is None:
        return None
    described = "\n".join(
        f"- {name}: {function.get('description') or '(no description)'} Parameters (JSON schema): "
        f"{json.dumps(_parameters(function), separators=(',', ':'))}"
        for name, function in plan.functions.items() if name in plan.forced.names)
    if plan.forced.name is not None:
        how = (f"Call the function '{plan.forced.name}' now: answer with its arguments only, "
               "as one JSON object.")
    else:
        how = ('Call one of these functions now: answer with one JSON object '
               '{"name": <the function>, "arguments": <its arguments>}.')
    return f"You can call functions.\n{described}\n{how}"


# -- templates without tool support ----------------------------------------------------------

def tool_calls_as_text(tool_calls: list[dict[str, Any]]) -> str:
    """An assistant turn's calls, written into its text for a template that has no tool calls."""
    return "\n".join(f"[call {call['id']}: {call['function']['name']}({call['function']['arguments']})]"
                     for call in tool_calls)


def tool_result_as_text(tool_call_id: str, content: str) -> str:
    return f"[result of {tool_call_id}]\n{content}"


def template_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """A call as Hugging Face chat templates expect it: arguments as a mapping, not JSON text."""
    arguments: Any = call["function"]["arguments"]
    try:
        arguments = json.loads(arguments)
    except (TypeError, ValueError):
        pass  # a template still renders the text
    return {"id": call["id"], "type": "function",
            "function": {"name": call["function"]["name"], "arguments": arguments}}


# -- one choice's text -> message fields and chunk deltas ---------------------------------------

class ChoiceText:
    """A plain answer: the text is the content."""

    def __init__(self) -> None:
        self.text = ""

    def feed(self, piece: str) -> dict[str, Any] | None:
        """The chunk delta for new text (None: nothing to send yet)."""
        self.text += piece
        return {"content": piece} if piece else None

    def end(self) -> dict[str, Any] | None:
        """The last chunk delta, once the engine finished (None: nothing left)."""
        return None

    def message(self) -> dict[str, Any]:
        return {"content": self.text}

    def finish_reason(self, engine_reason: str) -> str:
        return engine_reason


class ForcedCallText(ChoiceText):
    """A forced call: the text is the arguments (one named tool) or the wrapper object."""

    def __init__(self, forced: ForcedTool) -> None:
        super().__init__()
        self._forced = forced
        self._id = new_call_id()
        self._name = forced.name
        self._arguments_at: int | None = 0 if forced.name is not None else None
        self._started = False
        self._sent = 0  # characters of the arguments already streamed

    def _head(self) -> None:
        if self._arguments_at is None:
            match = _WRAPPER_HEAD.match(self.text)
            if match:
                self._name, self._arguments_at = json.loads(f'"{match.group(1)}"'), match.end()

    def _arguments(self, final: bool) -> str:
        """The arguments so far: held back while they could still be the wrapper's closing brace
        or trailing whitespace, so what was streamed is always a prefix of the final arguments."""
        body = self.text[self._arguments_at or 0:].lstrip() if self._arguments_at is not None else ""
        if self._forced.name is not None:
            return body.rstrip() if final else body.rstrip(" \t\r\n")
        if final:
            body = body.rstrip()
            return body[:-1].rstrip() if body.endswith("}") else body
        return body.rstrip(" \t\r\n}")

    def _fragments(self, final: bool) -> dict[str, Any] | None:
        self._head()
        if self._name is None:
            return None
        arguments = self._arguments(final)
        calls = []
        if not self._started:
            self._started = True
            calls.append({"index": 0, "id": self._id, "type": "function",
                          "function": {"name": self._name, "arguments": ""}})
        if len(arguments) > self._sent:
            calls.append({"index": 0, "function": {"arguments": arguments[self._sent:]}})
            self._sent = len(arguments)
        return {"tool_calls": calls} if calls else None

    def feed(self, piece: str) -> dict[str, Any] | None:
        self.text += piece
        return self._fragments(final=False)

    def end(self) -> dict[str, Any] | None:
        return self._fragments(final=True)

    def message(self) -> dict[str, Any]:
        self._head()
        if self._name is None:  # cut off before the function's name: no call to report
            return {"content": self.text}
        return {"content": None, "tool_calls": [{"id": self._id, "type": "function",
                                                 "function": {"name": self._name,
                                                              "arguments": self._arguments(final=True)}}]}

    def finish_reason(self, engine_reason: str) -> str:
        # "length": the arguments were cut off; the caller must see that, not a call to run.
        return "tool_calls" if engine_reason == "stop" and self._name is not None else engine_reason


class ParsedToolText(ChoiceText):
    """An auto answer on a model with a vLLM tool-call parser: content and/or calls, as it parses."""

    def __init__(self, parser_name: str, tokenizer: Any, body: dict[str, Any]) -> None:
        super().__init__()
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.tool_parsers import ToolParserManager

        self._request = ChatCompletionRequest(model=body.get("model", ""), messages=[],
                                              tools=body.get("tools"), tool_choice="auto")
        self._parser = ToolParserManager.get_tool_parser(parser_name)(tokenizer, self._request.tools)
        self._ids: dict[int, str] = {}  # our call ids by the parser's call index
        self._token_ids: list[int] = []
        self._called = False

    def _call_id(self, index: int) -> str:
        return self._ids.setdefault(index, new_call_id())

    def feed(self, piece: str, token_ids: tuple[int, ...] = ()) -> dict[str, Any] | None:
        previous, previous_ids = self.text, list(self._token_ids)
        self.text += piece
        self._token_ids.extend(token_ids)
        if not piece:
            return None
        delta = self._parser.extract_tool_calls_streaming(previous, self.text, piece, previous_ids,
                                                          list(self._token_ids), list(token_ids), self._request)
        if delta is None:
            return None
        out: dict[str, Any] = {}
        if delta.content:
            out["content"] = delta.content
        if delta.tool_calls:
            self._called = True
            out["tool_calls"] = [self._wire_fragment(call.model_dump(exclude_none=True))
                                 for call in delta.tool_calls]
        return out or None

    def _wire_fragment(self, fragment: dict[str, Any]) -> dict[str, Any]:
        if "id" in fragment or (fragment.get("function") or {}).get("name"):
            fragment = {**fragment, "id": self._call_id(fragment["index"]), "type": "function"}
            fragment["function"] = {"arguments": "", **fragment["function"]}
        return fragment

    def end(self) -> dict[str, Any] | None:
        # A parser may hold the last arguments until it sees the closing marker.
        rest = self._parser.get_remaining_unstreamed_args() if self._called else ""
        if not rest:
            return None
        index = len(self._parser.prev_tool_call_arr) - 1
        return {"tool_calls": [{"index": index, "function": {"arguments": rest}}]}

    def message(self) -> dict[str, Any]:
        found = self._parser.extract_tool_calls(self.text, self._request)
        if not found.tools_called:
            return {"content": self.text}
        self._called = True
        return {"content": found.content or None,
                "tool_calls": [{"id": self._call_id(index), "type": "function",
                                "function": {"name": call.function.name, "arguments": call.function.arguments}}
                               for index, call in enumerate(found.tool_calls)]}

    def finish_reason(self, engine_reason: str) -> str:
        return "tool_calls" if self._called and engine_reason == "stop" else engine_reason
