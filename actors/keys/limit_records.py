"""How a key's limits are kept in its record, and the rules for changing them (issue 19).

A key record carries two layers, each a JSON field of ``core.limits.Limits`` values (rpm, tpm,
the key's monthly budget in micro cost_units, the model allow-list):

- ``limits_ceiling``: set by an operator (CLI, admin API). The account owner cannot exceed it.
- ``limits``: set by the account owner (``PATCH /v1/keys/{prefix}``), each value at or under the
  ceiling's (a model list within the ceiling's list).

What a request is held to is the tighter of the two, field by field (``effective``), plus the
account's monthly budget (an operator setting on the account record). Plain functions: no Redis."""

from __future__ import annotations

import json
import re
from typing import Any

from core.limits import Limits, LimitsError, micro_from_cost_units
from core.money import FINETUNE_PREFIX

OWN_FIELD, CEILING_FIELD = "limits", "limits_ceiling"
MAX_MODELS = 64
# A model or mode name as the catalog writes them ("gpt-4o", "claude-3-5-haiku-latest",
# "meta-llama/Llama-3.1-8B", "private"), or a fine-tune "ft:NAME". The verifier pool does not
# hold the catalog, so any well-formed name is accepted; an unknown one simply never matches.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
# The names a change may carry (the PATCH body, the admin API, the CLI's flags).
CHANGE_FIELDS = ("rpm", "tpm", "monthly_budget_cost_units", "models")
NO_LIMITS = Limits()


class CeilingExceeded(LimitsError):
    """An owner's change above what the operator allows (the message names the field)."""


def checked_models(models: Any) -> frozenset[str] | None:
    if models is None:
        return None
    if isinstance(models, str) or not isinstance(models, (list, tuple, set, frozenset)):
        raise LimitsError("models must be a list of model or mode names")
    if not models:
        raise LimitsError("models must name at least one model or mode (null allows any)")
    if len(models) > MAX_MODELS:
        raise LimitsError(f"models may name at most {MAX_MODELS}")
    for name in models:
        if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or name == FINETUNE_PREFIX:
            raise LimitsError("models must be model, mode or ft: names")
    return frozenset(models)


def _rate(value: Any, field: str) -> int | None:
    # JSON true is an int in Python; a float such as 10.0 is refused (a rate is a whole number).
    if value is not None and (type(value) is not int or value < 1):
        raise LimitsError(f"{field} must be a positive whole number")
    return value


def changed(limits: Limits, changes: dict[str, Any]) -> Limits:
    """``limits`` with the fields ``changes`` names replaced (None clears one); fields it does
    not name are kept. Raises LimitsError for an unknown field or a bad value."""
    unknown = sorted(set(changes) - set(CHANGE_FIELDS))
    if unknown:
        raise LimitsError(f"unknown limit(s): {', '.join(unknown)}")
    values = {"rpm": limits.rpm, "tpm": limits.tpm, "key_budget_micro": limits.key_budget_micro,
              "models": limits.models}
    if "rpm" in changes:
        values["rpm"] = _rate(changes["rpm"], "rpm")
    if "tpm" in changes:
        values["tpm"] = _rate(changes["tpm"], "tpm")
    if "monthly_budget_cost_units" in changes:
        values["key_budget_micro"] = micro_from_cost_units(changes["monthly_budget_cost_units"],
                                                           "monthly_budget_cost_units")
    if "models" in changes:
        values["models"] = checked_models(changes["models"])
    return Limits(**values)


def encode(limits: Limits) -> str:
    """The record field's value: only the set fields; "" when none is set."""
    data: dict[str, Any] = {}
    if limits.rpm is not None:
        data["rpm"] = limits.rpm
    if limits.tpm is not None:
        data["tpm"] = limits.tpm
    if limits.key_budget_micro is not None:
        data["budget_micro"] = limits.key_budget_micro
    if limits.models is not None:
        data["models"] = sorted(limits.models)
    return json.dumps(data, separators=(",", ":")) if data else ""


def decode(text: str | None) -> Limits:
    if not text:
        return NO_LIMITS
    data = json.loads(text)
    models = data.get("models")
    return Limits(rpm=data.get("rpm"), tpm=data.get("tpm"), key_budget_micro=data.get("budget_micro"),
                  models=frozenset(models) if models is not None else None)


def decode_budget(text: str | None) -> int | None:
    """The account record's monthly budget field (micro cost_units as decimal text)."""
    return int(text) if text else None


def _tighter(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def effective(own: Limits, ceiling: Limits, account_budget_micro: int | None = None) -> Limits:
    """What a request is held to: the tighter value of each field; models in both lists. An
    operator who narrows the ceiling's list to names outside the owner's gets the ceiling's
    list (the operator's word wins; an empty allow-list is not a thing a key can have)."""
    models = own.models if ceiling.models is None else ceiling.models
    if own.models is not None and ceiling.models is not None:
        models = (own.models & ceiling.models) or ceiling.models
    return Limits(rpm=_tighter(own.rpm, ceiling.rpm), tpm=_tighter(own.tpm, ceiling.tpm),
                  key_budget_micro=_tighter(own.key_budget_micro, ceiling.key_budget_micro),
                  account_budget_micro=account_budget_micro, models=models)


def within(own: Limits, ceiling: Limits) -> None:
    """Raises CeilingExceeded when an owner's limits go past the operator's: a higher rate or
    budget, no limit where the operator set one is fine (the ceiling still applies), a model
    outside the operator's list."""
    for field, label in (("rpm", "rpm"), ("tpm", "tpm"), ("key_budget_micro", "monthly_budget_cost_units")):
        mine, cap = getattr(own, field), getattr(ceiling, field)
        if mine is not None and cap is not None and mine > cap:
            raise CeilingExceeded(f"{label} is above the operator's limit for this key")
    if own.models is not None and ceiling.models is not None and not own.models <= ceiling.models:
        raise CeilingExceeded("models names a model outside the operator's allow-list for this key")
