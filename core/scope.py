"""An account's scope: which backends may ever see its traffic (``actors.routing.scopes`` stores it)."""

from __future__ import annotations

from dataclasses import dataclass

IN_HOUSE_FIELD, EXCLUDED_FIELD = "scope_in_house_only", "scope_excluded_providers"


@dataclass(frozen=True, slots=True)
class Scope:
    in_house_only: bool = False
    excluded_providers: frozenset[str] = frozenset()

    def allows(self, provider: str, in_house: bool) -> bool:
        if self.in_house_only and not in_house:
            return False
        return provider not in self.excluded_providers

    @property
    def restricted(self) -> bool:
        return self.in_house_only or bool(self.excluded_providers)

    def rule(self) -> str:
        """The rule in words, for errors and the CLI; never names a provider that would have served."""
        if self.in_house_only:
            return "in-house models only"
        if self.excluded_providers:
            return "excluded third-party providers"
        return "no restriction"

    def as_dict(self) -> dict:
        return {"in_house_only": self.in_house_only, "excluded_providers": sorted(self.excluded_providers)}

    def to_fields(self) -> dict[str, str]:
        return {IN_HOUSE_FIELD: "1" if self.in_house_only else "0",
                EXCLUDED_FIELD: ",".join(sorted(self.excluded_providers))}

    @classmethod
    def from_fields(cls, in_house_only: str | None, excluded: str | None) -> Scope:
        return cls(in_house_only == "1", frozenset(filter(None, (excluded or "").split(","))))


UNRESTRICTED = Scope()


class ScopeError(ValueError):
    """A scope naming a provider the catalog does not have."""


def checked(scope: Scope, known_providers: set[str]) -> Scope:
    unknown = sorted(scope.excluded_providers - known_providers)
    if unknown:
        raise ScopeError(f"unknown provider(s): {', '.join(unknown)} (known: {', '.join(sorted(known_providers))})")
    return scope
