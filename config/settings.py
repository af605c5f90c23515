"""Settings: the shipped default catalogs, overlaid by a YAML file, overlaid by environment.

Precedence, lowest first: ``config/defaults/*.yaml`` < the file named by ``--config`` or
``NEUROAPI_CONFIG`` < environment variables. A mapping in the file is merged into the default
one key by key; a key set to ``null`` removes a default entry (a provider, a mode)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from config.catalog import InHouseModelSpec, ModelCard, ModeSpec, Price, ProviderSpec
from core.money import FINETUNE_PREFIX

CATALOG_SECTIONS = ("providers", "in_house_models", "modes", "prices", "capabilities")
STRIPE_SECRET_VARIABLE = "NEUROAPI_STRIPE_SECRET_KEY"
STRIPE_WEBHOOK_SECRET_VARIABLE = "NEUROAPI_STRIPE_WEBHOOK_SECRET"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names each bad field."""


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neuroapi"


def default_data_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "neuroapi"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Prometheus metrics of this node (Ray's metrics agent); None = a free port.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # None = start a local redis-server child with its data under data_dir.
    redis_url: str | None = None
    data_dir: Path
    # None = NEUROAPI_PEPPERS / NEUROAPI_ENVELOPE_KEYS, else a generated dev file in data_dir.
    secrets_file: Path | None = None
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A chat request's body, read only once its key is verified: sized for base64 images (20 MiB
    # carries about 15 MiB of image data). Ray Serve's handle messages are sized to carry it.
    max_chat_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    # A chat completion's whole time, every candidate and the stream included: past it the
    # caller gets 504 upstream_timeout (or, mid-stream, an error event).
    request_deadline_s: float = Field(default=600.0, gt=0, le=86400)
    # A non-streamed upstream answer larger than this is a 502, never read further. It must
    # stay under Serve's 4 MiB handle message limit (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH).
    max_response_bytes: int = Field(default=3 << 20, ge=64 * 1024, le=(4 << 20) - (256 << 10))
    ingress_replicas: int = Field(default=1, ge=1)
    verifier_replicas: int = Field(default=2, ge=1)
    # Accounts: bcrypt cost (2^rounds), session token lifetime.
    password_rounds: int = Field(default=12, ge=4, le=16)
    session_ttl_s: int = Field(default=3600, ge=60, le=86400)
    # Failed-auth throttling per source address, and the proxies whose X-Forwarded-For is
    # believed when finding that address (CIDRs; empty = the socket peer, always).
    failed_auth_limit: int = Field(default=20, ge=1)
    failed_auth_window_s: float = Field(default=60.0, gt=0)
    # While Redis is unreachable an ingress replica still serves keys it verified before, for
    # at most this long after its last contact (core.invalidation); a revocation waits at most
    # this long for a replica cut off from Redis (or killed without a graceful stop). 0 = never.
    cache_outage_serve_s: float = Field(default=60.0, ge=0, le=3600)
    trusted_proxies: list[str] = Field(default_factory=list)
    # The edge (Serve's HAProxy, edited by serve_app.haproxy_edge): a client sends its request
    # head within client_request_timeout_s, is silent at most client_idle_timeout_s while it is
    # expected to send or read (never while the gateway works on the answer), and one source
    # address (trusted_proxies aside) holds at most max_connections_per_source connections.
    client_request_timeout_s: int = Field(default=10, ge=1, le=300)
    client_idle_timeout_s: int = Field(default=60, ge=1, le=3600)
    # The gateway reads a request body within client_body_timeout_s, or answers 408.
    client_body_timeout_s: int = Field(default=30, ge=1, le=3600)
    max_connections_per_source: int = Field(default=1000, ge=1, le=100_000)
    # Sign-up attempts per source address in any sliding window (each costs a bcrypt hash).
    signup_limit: int = Field(default=10, ge=1)
    signup_window_s: float = Field(default=3600.0, gt=0)
    # Metering (actors.metering.batcher): call records go to Redis in batches of up to
    # metering_max_batch, or once the oldest waited metering_max_age_s; up to
    # metering_buffer_records wait in memory while Redis is away, the rest in
    # <data_dir>/metering-spill. The calls stream keeps about calls_stream_max_entries entries.
    # Off only to measure what metering costs (benchmarks): nothing is recorded or billed.
    metering: bool = True
    metering_max_batch: int = Field(default=200, ge=1, le=10_000)
    metering_max_age_s: float = Field(default=0.2, gt=0, le=60)
    metering_buffer_records: int = Field(default=100_000, ge=1, le=10_000_000)
    calls_stream_max_entries: int = Field(default=1_000_000, ge=1_000, le=1_000_000_000)
    # Off only where no model should load (the gateway benchmarks): in-house models are not offered.
    in_house: bool = True
    # Where the embedded default model is converted to, once (None = <cache dir>/neuroapi/models).
    model_cache_dir: Path | None = None
    # Fine-tune artifacts (finetunes/): copied here on deploy, loaded from here by every replica
    # (a shared filesystem in a cluster). None = <data_dir>/finetunes.
    finetune_store_dir: Path | None = None
    finetune_max_bytes: int = Field(default=2 << 30, ge=1 << 20)
    # Data lifecycle: one housekeeping pass this often purges deleted accounts
    # (actors.accounts.deletion) and applies the retention windows (actors.metering.retention):
    # per-call records by age, monthly usage counters (accounting) by months, the audit stream.
    housekeeping_every_s: float = Field(default=3600.0, gt=0)
    calls_retention_days: int = Field(default=30, ge=1, le=3650)
    # Ray's finished session directories (<ray temp dir>/session_*, their logs included) unchanged
    # this long are deleted when `neuroapi serve` starts its own Ray (serve_app.ray_sessions).
    log_retention_days: int = Field(default=14, ge=1)
    usage_retention_months: int = Field(default=84, ge=1, le=1200)  # 7 years: tax and accounting
    audit_retention_days: int = Field(default=400, ge=1, le=36500)
    # Billing with Stripe (actors.billing): on when NEUROAPI_STRIPE_SECRET_KEY is in the
    # environment of the gateway's processes (the key itself never enters settings, which travel
    # through Ray). stripe_api_base: a Stripe-compatible server instead of Stripe's.
    stripe_api_base: str | None = None
    stripe_price: str | None = None  # the subscription's metered price id (price_...)
    stripe_meter_event: str = "neuroapi_cost_units"  # the billing meter's event name
    billing_free_cost_units: int = Field(default=0, ge=0)  # a free allowance per month; 0 = none
    billing_past_due_grace_s: int = Field(default=3 * 86400, ge=0)  # past_due still serves this long
    billing_report_every_s: float = Field(default=60.0, gt=0)  # usage to Stripe, one pass this often
    # Where Checkout and the portal send the customer back to (the product's site).
    billing_return_url: str = "http://127.0.0.1:8000/"
    providers: dict[str, ProviderSpec]
    in_house_models: dict[str, InHouseModelSpec] = Field(default_factory=dict)
    modes: dict[str, ModeSpec]
    prices: dict[str, Price]
    capabilities: dict[str, ModelCard] = Field(default_factory=dict)  # provider models' cards

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"'{cidr}' is not an IP address or network") from None
        return cidrs

    @model_validator(mode="after")
    def _catalog_is_consistent(self) -> Settings:
        problems: list[str] = []
        owner: dict[str, str] = {}
        served = [(f"providers.{name}.models", f"provider '{name}'", model)
                  for name, provider in self.providers.items() for model in provider.models]
        served += [(f"in_house_models.{model}", "an in-house model", model) for model in self.in_house_models]
        for where, server, model in served:
            if model in owner:
                problems.append(f"{where}: '{model}' is already served by {owner[model]}")
            owner[model] = server
            # A third party bills us, so its price is required; an in-house model without a
            # price is metered at 0 (one YAML entry adds a model).
            if model not in self.prices and model not in self.in_house_models:
                problems.append(f"prices: no price for model '{model}'")
        for mode_name, mode in self.modes.items():
            if mode_name in owner:
                problems.append(f"modes.{mode_name}: a mode cannot share a model's name")
            for index, candidate in enumerate(mode.candidates):
                # A fine-tune ("ft:NAME") is deployed at run time; the registry resolves it per call.
                if candidate.model not in owner and not candidate.model.startswith(FINETUNE_PREFIX):
                    problems.append(
                        f"modes.{mode_name}.candidates.{index}.model: unknown model "
                        f"'{candidate.model}'"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def metering_spill_dir(self) -> Path:
        return self.data_dir / "metering-spill"

    @property
    def finetune_store(self) -> Path:
        return self.finetune_store_dir or self.data_dir / "finetunes"

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or default_cache_dir(os.environ) / "models"

    def served_in_house(self) -> dict[str, InHouseModelSpec]:
        """The in-house models this gateway runs (none when ``in_house`` is off)."""
        return dict(self.in_house_models) if self.in_house else {}

    def card(self, model: str) -> ModelCard:
        """What ``model`` can do and its context window: an in-house model's follow from its
        entry, a provider model's from ``capabilities`` (none listed: plain text only)."""
        in_house = self.in_house_models.get(model)
        if in_house is not None:
            return ModelCard(context_length=in_house.max_model_len, supports=sorted(in_house.capabilities))
        return self.capabilities.get(model) or ModelCard()

    def billing_enabled(self, environ: Mapping[str, str] | None = None) -> bool:
        return bool((os.environ if environ is None else environ).get(STRIPE_SECRET_VARIABLE))

    def enabled_providers(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Providers whose credential variable is set; the others are not offered."""
        environ = os.environ if environ is None else environ
        return [n for n, p in self.providers.items() if environ.get(p.credential_env)]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: {error}") from None


def _defaults() -> dict[str, Any]:
    folder = resources.files("config") / "defaults"
    return {s: yaml.safe_load((folder / f"{s}.yaml").read_text()) for s in CATALOG_SECTIONS}


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _environment_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for field, variable in (
        ("redis_url", "NEUROAPI_REDIS_URL"),
        ("host", "NEUROAPI_HOST"),
        ("port", "NEUROAPI_PORT"),
        ("metrics_port", "NEUROAPI_METRICS_PORT"),
        ("data_dir", "NEUROAPI_DATA_DIR"),
        ("secrets_file", "NEUROAPI_SECRETS_FILE"),
        ("metering", "NEUROAPI_METERING"),
        ("in_house", "NEUROAPI_IN_HOUSE_MODELS"),
        ("model_cache_dir", "NEUROAPI_MODEL_CACHE_DIR"),
        ("finetune_store_dir", "NEUROAPI_FINETUNE_STORE"),
        ("stripe_api_base", "NEUROAPI_STRIPE_API_BASE"),
        ("stripe_price", "NEUROAPI_STRIPE_PRICE"),
        ("stripe_meter_event", "NEUROAPI_STRIPE_METER_EVENT"),
        ("billing_free_cost_units", "NEUROAPI_BILLING_FREE_COST_UNITS"),
        ("billing_return_url", "NEUROAPI_BILLING_RETURN_URL"),
    ):
        if environ.get(variable):
            overrides[field] = environ[variable]
    for name in raw.get("providers") or {}:
        base_url = environ.get(f"NEUROAPI_{name.upper()}_BASE_URL")
        if base_url:
            overrides.setdefault("providers", {})[name] = {"base_url": base_url}
    return overrides


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def load_settings(
    config_path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = _defaults()
    config_path = config_path or environ.get("NEUROAPI_CONFIG")
    source = "the default catalog"
    if config_path:
        source = str(config_path)
        overlay = _read_yaml(Path(config_path))
        if not isinstance(overlay, Mapping):
            raise ConfigError(f"{config_path}: the top level must be a mapping of settings")
        raw = _merge(raw, overlay)
    raw = _merge(raw, _environment_overrides(raw, environ))
    raw.setdefault("data_dir", str(default_data_dir(environ)))
    try:
        return Settings.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"invalid configuration ({source}):\n{_describe(error)}") from None
