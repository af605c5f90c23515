"""LangChain's OpenAI chat model pointed at NeuroAPI, as its users write it: tools bound to the
model come back as parsed tool calls, and structured output comes back as the pydantic object,
on every provider behind the gateway."""

from __future__ import annotations

import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.support.upstreams import Behaviour


class GetWeather(BaseModel):
    """Weather in a city."""

    city: str = Field(description="The city")


class Forecast(BaseModel):
    """A forecast."""

    city: str
    sunny: bool


def chat_model(gateway, api_key: str, model: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=gateway.url + "/v1", api_key=api_key, model=model, max_retries=0, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5", "deepseek-chat"])
def test_bind_tools_returns_parsed_tool_calls(gateway, api_key, upstreams, model):
    upstreams.script(model, Behaviour(tool_calls=[("GetWeather", '{"city": "Paris"}')]))
    reply = chat_model(gateway, api_key, model).bind_tools([GetWeather]).invoke("What is the weather in Paris?")
    assert [(call["name"], call["args"]) for call in reply.tool_calls] == [("GetWeather", {"city": "Paris"})]
    assert reply.tool_calls[0]["id"] and reply.invalid_tool_calls == []
    sent = upstreams.for_model(model)[-1].body["tools"][0]
    assert (sent["name"] if model.startswith("claude") else sent["function"]["name"]) == "GetWeather"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5", "deepseek-chat"])
def test_with_structured_output_returns_the_object(gateway, api_key, upstreams, model):
    # DeepSeek has no json_schema response_format (JSON Output is json_object only), so its
    # users ask LangChain for structured output through a forced tool call instead.
    method = "function_calling" if model == "deepseek-chat" else "json_schema"
    structured = chat_model(gateway, api_key, model).with_structured_output(Forecast, method=method)
    forecast = structured.invoke("Forecast for Paris.")
    assert isinstance(forecast, Forecast)
    assert forecast == Forecast(city="x", sunny=True)  # the fake's instance of the schema
