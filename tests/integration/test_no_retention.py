"""Prompts and completions transit and are forgotten: a canary sent through every endpoint,
streamed and not, on success and error paths, appears in no Redis key or value, no log line
and no file the run wrote."""

import json
import secrets
from pathlib import Path

import httpx
import ray

from config.settings import load_settings
from tests.support.gateway_client import caller_address, records_for
from tests.support.leak_scan import scan_files, scan_redis
from tests.support.upstreams import Behaviour


async def test_a_canary_prompt_is_retained_nowhere(gateway, api_key, upstreams, tmp_path_factory):
    canary = "CANARY-" + secrets.token_hex(8)
    messages = [  # a conversation: the canary in the system prompt, the history and the new turn
        {"role": "system", "content": f"system {canary}"}, {"role": "user", "content": f"say {canary} now"},
        {"role": "assistant", "content": f"I said {canary}"}, {"role": "user", "content": f"again {canary}"},
    ]
    headers = {"Authorization": f"Bearer {api_key}", "X-Forwarded-For": caller_address()}
    request_ids = []
    over_limit = load_settings(gateway.config_path).max_chat_body_bytes  # sized for base64 images
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        calls = [
            {"model": "gpt-4o-mini", "messages": messages},
            {"model": "claude-haiku-4-5", "messages": messages, "stream": True},
            {"model": "deepseek-chat", "messages": messages, "stream": True, "stream_options": {"include_usage": True}},
            {"model": "cross-provider", "messages": messages},  # after a scripted failure: the fallback path
            {"model": "gpt-4o-mini", "messages": messages, "stream": True},  # fails mid-stream
            {"model": "gpt-4o-mini", "messages": messages, "tools": [canary]},  # 400
            {"model": canary, "messages": messages},  # 404
            # The in-house model, on this gateway's own replicas (vLLM here).
            {"model": "private", "messages": messages, "max_tokens": 8},
            {"model": "private", "messages": messages, "max_tokens": 8, "stream": True},
            {"model": "private", "messages": messages, "max_tokens": 100_000},  # 400: over the context
        ]
        upstreams.script("deepseek-chat", Behaviour(), Behaviour(status=503))
        upstreams.script("gpt-4o-mini", Behaviour(), Behaviour(mid_stream_error=True))
        statuses = []
        for body in calls + ["upstream error"]:
            if body == "upstream error":  # the upstream fails: 502
                upstreams.script("claude-haiku-4-5", Behaviour(status=500))
                body = {"model": "claude-haiku-4-5", "messages": messages}
            response = await client.post("/v1/chat/completions", headers=headers, json=body)
            statuses.append(response.status_code)
            request_ids.append(response.headers["x-request-id"])
        # A caller that leaves mid-stream.
        upstreams.script("deepseek-chat", Behaviour(tokens=200, gap_s=0.02))
        async with client.stream("POST", "/v1/chat/completions", headers=headers,
                                 json={"model": "deepseek-chat", "messages": messages, "stream": True}) as left:
            request_ids.append(left.headers["x-request-id"])
            async for _ in left.aiter_raw():
                break
        bad_key = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer neuro_{canary}"},
                                    json={"model": "fast", "messages": messages})
        statuses.append(bad_key.status_code)
        request_ids.append(bad_key.headers["x-request-id"])
        huge = await client.post("/v1/chat/completions", headers=headers,
                                 content=json.dumps({"model": "fast", "messages": messages, "pad": "x" * over_limit}))
        statuses.append(huge.status_code)
        request_ids.append(huge.headers["x-request-id"])
    assert statuses == [200, 200, 200, 200, 200, 400, 404, 200, 200, 400, 502, 401, 413]
    assert any(canary in json.dumps(r.body) for r in upstreams.requests)  # it did go through
    assert len(await records_for(gateway, request_ids)) == len(request_ids)  # metered, every one

    assert_retained_nowhere(gateway, tmp_path_factory, canary)


def assert_retained_nowhere(gateway, tmp_path_factory, canary: str) -> None:
    assert scan_redis(gateway.redis.url, canary) == []
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    temp = tmp_path_factory.getbasetemp()  # the gateway's data dir, the Redis dirs, the spill dir
    assert scan_files([session_dir, temp, gateway.data_dir, gateway.redis.folder], canary) == []


PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
LOOKUP_TOOL = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}


def called_with(answer: str) -> str:
    """The arguments of the one tool call in an answer, whole or reassembled from its stream."""
    if not answer.startswith("data:"):
        return json.loads(answer)["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    chunks = [json.loads(line[len("data: "):]) for line in answer.splitlines() if line.startswith("data: {")]
    return "".join(call["function"].get("arguments") or "" for chunk in chunks for choice in chunk["choices"]
                   for call in choice["delta"].get("tool_calls") or [])


async def test_a_canary_in_tool_calls_tool_results_and_images_is_retained_nowhere(
        gateway, api_key, upstreams, tmp_path_factory):
    canary = "CANARY-" + secrets.token_hex(8)
    # Base64's alphabet has no "-": this one lies inside the image's base64 data itself.
    image_canary = "CANARY" + secrets.token_hex(13)  # 32 characters: whole base64 quads
    arguments = json.dumps({"q": canary})
    asked = [{"role": "user", "content": "look it up"}]
    tool_loop = [*asked, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"q": "lookup"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": f"the result is {canary}"}]
    image = [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_canary}{PNG_BASE64}"}}]}]
    calls = [
        # The upstream's tool-call arguments hold the canary (scripted below), whole and in fragments.
        {"model": "gpt-4o-mini", "messages": asked, "tools": [LOOKUP_TOOL]},
        {"model": "gpt-4o-mini", "messages": asked, "tools": [LOOKUP_TOOL], "stream": True},
        {"model": "claude-haiku-4-5", "messages": asked, "tools": [LOOKUP_TOOL], "stream": True,
         "stream_options": {"include_usage": True}},
        {"model": "claude-haiku-4-5", "messages": asked, "tools": [LOOKUP_TOOL]},
        # The caller's tool result holds it.
        {"model": "gpt-4o-mini", "messages": tool_loop, "tools": [LOOKUP_TOOL], "stream": True},
        {"model": "claude-haiku-4-5", "messages": tool_loop, "tools": [LOOKUP_TOOL]},
        {"model": "deepseek-chat", "messages": tool_loop, "tools": [LOOKUP_TOOL], "stream": True},
        # A base64 image holds it.
        {"model": "gpt-4o-mini", "messages": image},
        {"model": "claude-haiku-4-5", "messages": image, "stream": True},
        {"model": "deepseek-chat", "messages": image},  # 400: no vision
    ]
    upstreams.script("gpt-4o-mini", *[Behaviour(tool_calls=[("f", arguments)], fragment=4)] * 2)
    upstreams.script("claude-haiku-4-5", *[Behaviour(tool_calls=[("f", arguments)], fragment=4)] * 2)
    headers = {"Authorization": f"Bearer {api_key}", "X-Forwarded-For": caller_address()}
    statuses, request_ids, answers = [], [], []
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        for body in calls:
            response = await client.post("/v1/chat/completions", headers=headers, json=body)
            statuses.append(response.status_code)
            request_ids.append(response.headers["x-request-id"])
            answers.append(response.text)
    assert statuses == [200] * 9 + [400]
    # The paths were really taken: the caller got the canary back in every tool call, the
    # upstreams got the tool results and the images.
    assert [json.loads(called_with(answer)) for answer in answers[:4]] == [{"q": canary}] * 4
    sent = [json.dumps(r.body) for r in upstreams.requests]
    assert sum(canary in text for text in sent) == 3 and sum(image_canary in text for text in sent) == 2
    assert len(await records_for(gateway, request_ids)) == len(request_ids)

    assert_retained_nowhere(gateway, tmp_path_factory, canary)
    assert_retained_nowhere(gateway, tmp_path_factory, image_canary)


async def test_a_canary_through_messages_and_generate_is_retained_nowhere(gateway, api_key, upstreams, tmp_path_factory):
    """The canary in the prompt, the history and a tool result of /v1/messages (Claude as sent,
    GPT translated, streamed and not, counted) and /v1/generate."""
    canary = "CANARY-" + secrets.token_hex(8)
    tool_turns = [
        {"role": "user", "content": f"look up {canary}"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"q": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": f"found {canary}"}]},
    ]
    tool = {"name": "f", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
    headers = {"x-api-key": api_key, "anthropic-version": "2023-06-01", "X-Forwarded-For": caller_address()}
    calls = [
        ("/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": tool_turns, "tools": [tool]}),
        ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 64, "messages": tool_turns, "tools": [tool],
                          "stream": True}),
        ("/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 64, "stream": True,
                          "system": f"system {canary}", "messages": tool_turns[:1]}),
        ("/v1/messages", {"model": "private", "max_tokens": 8, "messages": tool_turns[:1]}),
        ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 64, "messages": tool_turns[:1], "top_k": 3}),  # 400
        ("/v1/messages/count_tokens", {"model": "claude-haiku-4-5", "messages": tool_turns, "tools": [tool]}),
        ("/v1/generate", {"prompt": f"again {canary}", "mode": "fast", "message_history": [
            {"role": "user", "content": f"say {canary}"}, {"role": "assistant", "content": f"I said {canary}"}]}),
        ("/v1/generate", {"prompt": f"again {canary}", "mode": "private", "max_tokens": 8, "stream": True}),
    ]
    statuses, request_ids = [], []
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        for path, body in calls:
            response = await client.post(path, headers=headers, json=body)
            statuses.append(response.status_code)
            request_ids.append(response.headers["x-request-id"])
    assert statuses == [200, 200, 200, 200, 400, 200, 200, 200]
    assert sum(canary in json.dumps(r.body) for r in upstreams.requests) >= 5  # it did go through
    assert len(await records_for(gateway, request_ids)) == len(request_ids)
    assert_retained_nowhere(gateway, tmp_path_factory, canary)
