"""The scope promise as a property: over random catalogs, modes, scopes and injected upstream
failures, a provider the scope forbids never receives a connection, and the caller gets either
an answer from an allowed backend, an allowed backend's failure, or the scope error.

Real routing (``build_routing_table``, ``attempt_order``), the real fallback loop
(``serve_app.endpoints.chat.fallback``) and real provider clients over HTTP to fake upstreams on loopback that
record every request; one provider in each catalog may refuse connections outright."""

import asyncio
import json
import random
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.providers import ADAPTERS
from actors.providers.client import ProviderClient
from actors.routing.table import attempt_order, build_routing_table
from config.catalog import ModeSpec, Price, ProviderSpec
from config.settings import Settings
from core.backend import Completion, UpstreamCall
from core.errors import GatewayError
from core.scope import Scope
from serve_app.endpoints.chat.fallback import Outcome, complete_chat, open_chat_stream
from serve_app.runtime import free_port
from tests.support.upstreams import ANY_CREDENTIAL, Behaviour

NAMES = ["alpha", "beta", "gamma", "delta"]
READ_TIMEOUT_S = 0.25
FAILURES = {
    "ok": None,
    "500": Behaviour(status=500),
    "429": Behaviour(status=429),
    "400": Behaviour(status=400),  # not retriable: the caller's request is at fault
    "timeout": Behaviour(delay_s=READ_TIMEOUT_S * 2),
}
CLOSED_PORT = free_port()  # nothing listens there: connection refused


@st.composite
def scenarios(draw):
    providers = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    in_house = {p: draw(st.booleans()) for p in providers}
    refusing = draw(st.sampled_from([None, *providers]))
    models = {p: [f"{p}-m{i}" for i in range(draw(st.integers(1, 2)))] for p in providers}
    every_model = [m for ms in models.values() for m in ms]
    modes = {
        f"mode{i}": [(m, draw(st.sampled_from([0.0, 1.0, 2.5]))) for m in
                     draw(st.lists(st.sampled_from(every_model), min_size=1, max_size=4, unique=True))]
        for i in range(draw(st.integers(1, 3)))
    }
    scope = Scope(draw(st.booleans()), frozenset(draw(st.lists(st.sampled_from(providers), unique=True))))
    failures = {m: draw(st.sampled_from(list(FAILURES))) for m in every_model}
    asked = draw(st.sampled_from(sorted(modes) + every_model))
    return providers, in_house, refusing, models, modes, scope, failures, asked, draw(st.booleans())


def catalog(fakes, providers, in_house, refusing, models, modes) -> Settings:
    def base_url(provider: str) -> str:
        if provider == refusing:
            return f"http://127.0.0.1:{CLOSED_PORT}/v1"
        return f"{fakes.url}/any/{provider}/v1"

    return Settings(
        data_dir=tempfile.gettempdir(),
        providers={p: ProviderSpec(adapter="openai", in_house=in_house[p], base_url=base_url(p),
                                   credential_env="UNUSED", models=models[p], read_timeout_s=READ_TIMEOUT_S,
                                   connect_timeout_s=1.0) for p in providers},
        modes={name: ModeSpec(candidates=[{"model": m, "weight": w} for m, w in candidates])
               for name, candidates in modes.items()},
        prices={m: Price(input=1, output=1) for ms in models.values() for m in ms},
    )


class ClientBackends:
    def __init__(self, settings: Settings):
        self.clients = {name: ProviderClient(ADAPTERS[spec.adapter](spec, ANY_CREDENTIAL))
                        for name, spec in settings.providers.items()}

    async def complete(self, backend, call):
        return await self.clients[backend.provider].complete(call)

    def stream(self, backend, call):
        return self.clients[backend.provider].stream(call)

    async def aclose(self):
        for client in self.clients.values():
            await client.aclose()


async def call_through(settings: Settings, scope: Scope, asked: str, stream: bool):
    """What the ingress does for one request, minus Ray: the answer's model, or the error."""
    table = build_routing_table(settings, settings.providers)
    body = {"messages": [{"role": "user", "content": "hello"}], "stream": stream}
    call = UpstreamCall("req-property", "", body, False, scope)
    backends = ClientBackends(settings)
    try:
        order = attempt_order(table.resolve(asked), body, random.Random(0), scope)
        if not stream:
            completion = await complete_chat(backends, order, call, Outcome())
            assert isinstance(completion, Completion)
            return json.loads(completion.body)["model"]
        outcome = Outcome()
        events = await open_chat_stream(backends, order, call, outcome)
        async for _ in events:
            pass
        return outcome.backend.model
    except GatewayError as error:
        return error
    finally:
        await backends.aclose()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_a_forbidden_provider_never_receives_a_connection(fakes, scenario):
    providers, in_house, refusing, models, modes, scope, failures, asked, stream = scenario
    fakes.reset()
    for model, failure in failures.items():
        if FAILURES[failure] is not None:
            fakes.script(model, FAILURES[failure])
    settings_ = catalog(fakes, providers, in_house, refusing, models, modes)
    allowed = {p for p in providers if scope.allows(p, in_house[p])}
    owner = {m: p for p, ms in models.items() for m in ms}

    result = asyncio.run(call_through(settings_, scope, asked, stream))

    contacted = {r.provider for r in fakes.requests}
    assert contacted <= allowed, f"scope {scope} forbids {contacted - allowed}, yet they were contacted"
    candidates = {m for m, _ in modes[asked]} if asked in modes else {asked}
    if isinstance(result, str):  # an answer: from an allowed backend among the candidates
        assert result in candidates and owner[result] in allowed
        assert failures[result] == "ok" and owner[result] != refusing
    elif result.code == "scope_forbids":
        assert result.status == 403 and not fakes.requests
        assert not {owner[m] for m in candidates} & allowed
        # It names the rule and echoes what was asked, never a provider that would have served.
        assert all(p not in result.message.replace(f"'{asked}'", "") for p in providers)
    else:  # every allowed candidate that was tried failed
        assert {owner[m] for m in candidates} & allowed
        assert result.status in (400, 429, 502, 503, 504)


@pytest.mark.parametrize("scope, listed", [
    (Scope(), ["mixed", "outside", "a-1", "h-1"]),
    (Scope(in_house_only=True), ["mixed", "h-1"]),
    (Scope(excluded_providers=frozenset({"a"})), ["mixed", "h-1"]),
])
def test_models_lists_only_what_the_scope_allows(scope, listed):
    settings_ = Settings(
        data_dir=tempfile.gettempdir(),
        providers={"a": ProviderSpec(adapter="openai", base_url="http://a.example/v1", credential_env="A",
                                     models=["a-1"]),
                   "h": ProviderSpec(adapter="openai", in_house=True, base_url="http://h.example/v1",
                                     credential_env="H", models=["h-1"])},
        modes={"mixed": ModeSpec(candidates=[{"model": "a-1"}, {"model": "h-1", "weight": 0}]),
               "outside": ModeSpec(candidates=[{"model": "a-1"}])},
        prices={"a-1": Price(input=1, output=1), "h-1": Price(input=1, output=1)},
    )
    assert build_routing_table(settings_, ["a", "h"]).listing(scope) == listed
