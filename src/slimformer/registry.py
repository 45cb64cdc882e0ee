"""Name -> object tables, so YAML names registry keys and never Python import paths."""

from collections.abc import Callable
from typing import Generic, TypeVar

from slimformer.errors import RecipeError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of losses, schedules, tasks or stages: one decorator per new entry."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise RecipeError(
                f"Unknown {self.kind} {name!r}. Known {self.kind}s: {', '.join(self.names())}."
            )
        return self._entries[name]

    def check_known(self, names) -> None:
        """ValueError naming every unknown entry and the known ones (for config validators)."""
        unknown = [n for n in names if n not in self._entries]
        if unknown:
            raise ValueError(f"unknown {self.kind}(s) {unknown}; known: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
