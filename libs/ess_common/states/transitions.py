"""A transition of a state machine: the states it may leave from and the state it goes to."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

S = TypeVar("S", bound=StrEnum)


@dataclass(frozen=True)
class Transition(Generic[S]):
    name: str
    sources: tuple[S, ...]
    target: S

    def allows(self, status: str) -> bool:
        return status in self.sources


def table(transitions: tuple[Transition[S], ...]) -> dict[str, tuple[tuple[S, ...], S]]:
    """The transitions by name: what a reader (and the tests) see of a machine."""
    return {t.name: (t.sources, t.target) for t in transitions}
