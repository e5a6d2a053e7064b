"""A name -> function registry, filled by a decorator.

Loss variants (DPO family, KL estimators) are looked up by the name a config gives, never
chosen by an ``elif`` chain. A registry is a plain ``dict`` so that users can inspect it;
``lookup`` turns an unknown name into a ``ValueError`` that lists the names that exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


class Registry(dict[str, _T]):
    """A ``dict`` from name to entry, with a registering decorator and a helpful lookup.

    Args:
        kind: What the entries are, for error messages (e.g. ``"DPO loss"``).
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, names: tuple[str, ...], entry: _T) -> None:
        """Stores ``entry`` under every name in ``names``.

        Raises:
            ValueError: If no name is given or a name is already taken.
        """
        if not names:
            raise ValueError(f"a {self.kind} needs at least one name")
        for name in names:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
        for name in names:
            self[name] = entry

    def decorator(self, *names: str) -> Callable[[_T], _T]:
        """Returns a decorator that registers the decorated object under ``names`` unchanged."""

        def register(entry: _T) -> _T:
            self.add(names, entry)
            return entry

        return register

    def lookup(self, name: str) -> _T:
        """Returns the entry registered under ``name``.

        Raises:
            ValueError: If ``name`` is not registered; the message lists the registered names.
        """
        try:
            return self[name]
        except KeyError:
            known = ", ".join(sorted(self))
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self)
