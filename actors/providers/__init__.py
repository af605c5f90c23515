"""One adapter per provider: how to call it and how to turn its answers into OpenAI's shape."""

from actors.providers.adapter import ProviderAdapter
from actors.providers.anthropic_api import AnthropicAdapter
from actors.providers.deepseek_api import DeepSeekAdapter
from actors.providers.openai_api import OpenAIAdapter

ADAPTERS: dict[str, type[ProviderAdapter]] = {
    "openai": OpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "deepseek": DeepSeekAdapter,
}

__all__ = ["ADAPTERS", "ProviderAdapter"]
