"""What a model can do steers routing on the live gateway; prompt-cache tokens are billed at their
own prices, exactly; a request sized by base64 images crosses Ray Serve to the provider whole."""

import base64
import json
from decimal import Decimal

from config.settings import load_settings
from tests.support.gateway_client import account_with_key, bearer, records_for
from tests.support.upstreams import Behaviour

MESSAGES = [{"role": "user", "content": "capable?"}]
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": False}}}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_models_list_each_models_capabilities_and_context_window(client, api_key):
    listing = (await client.get("/v1/models", headers=auth(api_key))).json()["data"]
    by_id = {entry["id"]: entry for entry in listing}
    assert {"tools", "json_schema", "vision", "logprobs"} <= set(by_id["gpt-4o-mini"]["capabilities"])
    assert by_id["gpt-4o-mini"]["context_length"] == 128000
    assert "json_schema" not in by_id["deepseek-chat"]["capabilities"]
    in_house = by_id["smollm2-135m-instruct"]
    # The test catalog gives it 2048 tokens; it has no tool parser, so only forced tool calls.
    assert in_house["context_length"] == 2048 and in_house["in_house"] is True
    assert set(in_house["capabilities"]) == {"forced_tools", "json_object", "json_schema", "logprobs"}
    # A mode can do what at least one of its candidates can.
    assert "json_schema" in by_id["cheap"]["capabilities"] and by_id["cheap"]["mode"] is True


async def test_a_mode_skips_a_candidate_that_cannot_honour_the_request(client, api_key, upstreams):
    # "cheap" tries deepseek-chat first; it has no json_schema, so gpt-4o-mini (its fallback) serves.
    response = await client.post("/v1/chat/completions", headers=auth(api_key), json={
        "model": "cheap", "messages": MESSAGES, "response_format": SCHEMA_FORMAT})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "gpt-4o-mini"
    assert json.loads(response.json()["choices"][0]["message"]["content"]).keys() == {"city"}
    assert upstreams.for_model("deepseek-chat") == []


async def test_a_named_model_that_lacks_a_capability_is_a_400_naming_field_and_model(client, api_key, upstreams):
    response = await client.post("/v1/chat/completions", headers=auth(api_key), json={
        "model": "smollm2-135m-instruct", "messages": MESSAGES, "tools": TOOLS})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsupported_parameter"
    assert "'tools'" in error["message"] and "smollm2-135m-instruct" in error["message"]
    response = await client.post("/v1/chat/completions", headers=auth(api_key), json={
        "model": "deepseek-chat", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://images.example/cat.png"}}]}]})
    assert response.status_code == 400 and "'image_url'" in response.json()["error"]["message"]
    assert upstreams.requests == []


async def test_a_six_megabyte_image_reaches_the_provider_whole(client, api_key, upstreams):
    # Over Serve's default 4 MiB handle message: the gateway sizes the handle for max_chat_body_bytes.
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + bytes(6 * 1024 * 1024)).decode()
    response = await client.post("/v1/chat/completions", headers=auth(api_key), timeout=60, json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": image}}]}]})
    assert response.status_code == 200, response.text
    sent = upstreams.for_model("gpt-4o-mini")[-1].body["messages"][0]["content"][1]
    assert sent == {"type": "image_url", "image_url": {"url": image}}


async def test_prompt_cache_reads_and_writes_are_billed_at_their_own_prices(client, api_key, upstreams, gateway):
    prices = load_settings(gateway.config_path).prices["claude-haiku-4-5"]
    upstreams.script("claude-haiku-4-5", Behaviour(cached_tokens=1000, cache_write_tokens=300))
    response = await client.post("/v1/chat/completions", headers=auth(api_key), json={
        "model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "cache me please"}]})
    assert response.status_code == 200, response.text
    usage = json.loads(response.text, parse_float=Decimal)["usage"]  # money never passes through a float
    assert usage["prompt_tokens_details"] == {"cached_tokens": 1000, "cache_write_tokens": 300}
    uncached = usage["prompt_tokens"] - 1300
    expected = (uncached * prices.input + 1000 * prices.cache_read + 300 * prices.cache_write
                + usage["completion_tokens"] * prices.output)
    assert prices.cache_read < prices.input < prices.cache_write  # the test means something
    assert usage["cost_units"] * 1_000_000 == expected
    assert response.headers["x-neuroapi-cost-units"] == str(usage["cost_units"])
    record = (await records_for(gateway, [response.headers["x-request-id"]]))[response.headers["x-request-id"]]
    assert int(record["cost_micro_units"]) == expected


async def test_a_tool_stream_falls_back_across_providers_before_its_first_byte(client, api_key, upstreams, gateway):
    # "cross-provider": deepseek-chat first, claude-haiku-4-5 as the fallback, which answers in
    # Anthropic's events that the gateway turns into OpenAI tool-call deltas.
    upstreams.script("deepseek-chat", Behaviour(status=503))
    upstreams.script("claude-haiku-4-5", Behaviour(tool_calls=[("weather", '{"city": "Oslo"}')], fragment=2))
    response = await client.post("/v1/chat/completions", headers=auth(api_key), json={
        "model": "cross-provider", "messages": MESSAGES, "tools": TOOLS, "stream": True})
    assert response.status_code == 200
    chunks = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: {")]
    fragments = [f for c in chunks for f in c["choices"][0]["delta"].get("tool_calls") or []]
    assert fragments[0]["function"]["name"] == "weather" and fragments[0]["id"]
    assert "".join(f["function"]["arguments"] for f in fragments) == '{"city": "Oslo"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert [r.provider for r in upstreams.requests] == ["deepseek", "anthropic"]
    record = (await records_for(gateway, [response.headers["x-request-id"]]))[response.headers["x-request-id"]]
    assert (record["model"], record["status"]) == ("claude-haiku-4-5", "200")
    assert int(record["completion_tokens"]) > 0


async def test_scope_and_capabilities_together_never_reach_an_excluded_provider(client, gateway, upstreams):
    email, key = await account_with_key(client)
    response = await client.put("/v1/admin/account-scope", json={"email": email, "excluded_providers": ["openai"]},
                                headers=bearer(gateway.environ["NEUROAPI_ADMIN_TOKEN"]))
    assert response.status_code == 200
    structured = {"model": "fast", "messages": MESSAGES, "response_format": SCHEMA_FORMAT}
    # "fast": gpt-4o-mini is excluded, deepseek-chat cannot do json_schema: only Claude may serve.
    for _ in range(4):
        answer = await client.post("/v1/chat/completions", headers=auth(key), json=structured)
        assert answer.status_code == 200 and answer.json()["model"] == "claude-haiku-4-5"
    upstreams.script("claude-haiku-4-5", Behaviour(status=500))
    assert (await client.post("/v1/chat/completions", headers=auth(key), json=structured)).status_code == 502
    assert {r.provider for r in upstreams.requests} == {"anthropic"}
