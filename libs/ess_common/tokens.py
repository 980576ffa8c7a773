"""Bearer tokens by role: the head API's, and an edge's when the operator gives it the same
configuration (`ESS_TOKENS`)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import SecretStr


class Role(StrEnum):
    PANDA = "panda"
    PILOT = "pilot"
    EDGE = "edge"
    ADMIN = "admin"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenBook:
    """The configured tokens, kept as digests: comparing digests of one length in constant
    time tells nothing about how much of a token was right."""

    entries: tuple[tuple[bytes, Role], ...]

    @classmethod
    def from_settings(cls, tokens: Mapping[str, Sequence[SecretStr]]) -> TokenBook:
        return cls(
            tuple(
                (_digest(token.get_secret_value()), Role(role))
                for role, given in tokens.items()
                for token in given
            )
        )

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def role_of(self, token: str) -> Role | None:
        wanted = _digest(token)
        found: Role | None = None
        # Every entry is compared, so the time taken does not say which one matched.
        for digest, role in self.entries:
            if hmac.compare_digest(digest, wanted):
                found = role
        return found
