"""The admin API's bearer token: ``NEUROAPI_ADMIN_TOKEN``, from the environment only (never in
config files, so never in Ray's checkpoints).

The admin API can change any account's scope and deploy fine-tunes, so its token must not be
guessable: one shorter than ``MIN_LENGTH`` characters leaves the API off (``neuroapi serve``
refuses to start with one, and an ingress that is given one anyway answers 403 saying why)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ENV = "NEUROAPI_ADMIN_TOKEN"
MIN_LENGTH = 32  # characters: e.g. `openssl rand -hex 32` gives 64


@dataclass(frozen=True)
class AdminToken:
    value: bytes  # empty when the admin API is off
    off_because: str | None  # None when it is on

    @property
    def on(self) -> bool:
        return self.off_because is None


def read_admin_token(environ: Mapping[str, str]) -> AdminToken:
    token = environ.get(ENV, "")
    if not token:
        return AdminToken(b"", f"set {ENV} for the gateway")
    if len(token) < MIN_LENGTH:
        return AdminToken(b"", f"{ENV} is shorter than {MIN_LENGTH} characters (use e.g. `openssl rand -hex 32`)")
    return AdminToken(token.encode(), None)
