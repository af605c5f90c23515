"""The OpenAI Agents SDK with its Chat Completions model pointed at NeuroAPI: an agent calls a
Python function tool, and its final output uses what the tool returned."""

from __future__ import annotations

import json

import pytest
from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from tests.support.upstreams import Behaviour


@pytest.fixture(autouse=True)
def no_tracing():
    set_tracing_disabled(True)  # the SDK would export traces to OpenAI: nothing may leave the machine


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
async def test_an_agent_calls_a_python_tool_and_uses_its_result(gateway, api_key, upstreams, model):
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    upstreams.script(model, Behaviour(tool_calls=[("get_weather", '{"city": "Paris"}')]))
    client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0, timeout=60)
    agent = Agent(name="weather", instructions="Answer with the weather tool.", tools=[get_weather],
                  model=OpenAIChatCompletionsModel(model=model, openai_client=client))
    result = await Runner.run(agent, "What is the weather in Paris?")
    assert calls == ["Paris"]
    assert result.final_output == "Echo: sunny in Paris "
    # Two model calls: the one that asked for the tool, and the one that read its result.
    asked, answered = upstreams.for_model(model)
    assert "sunny in Paris" not in json.dumps(asked.body) and "sunny in Paris" in json.dumps(answered.body)
    await client.close()
