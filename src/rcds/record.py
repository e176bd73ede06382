"""A base for the few mutable records of the client path (:class:`~rcds.format.dirent.Dirent`,
the HTTP response head, a fetcher's endpoint record).

The client path imports no :mod:`dataclasses` (it pulls in :mod:`inspect` and friends, and each
dataclass costs ~0.7 ms to create at import; see docs/performance.md). Immutable records are
:class:`typing.NamedTuple`; a mutable one subclasses :class:`SlotRecord`, lists its fields in
``__slots__`` (in order; ``__match_args__`` may be the same tuple) and writes its ``__init__``.
"""

from __future__ import annotations

from typing import Any


class SlotRecord:
    """Compared field by field (same class only), shown with its fields, unhashable (it is
    mutable), picklable; the fields are the subclass's ``__slots__``."""

    __slots__: tuple[str, ...] = ()
    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, SlotRecord)
        return self._values() == other._values()

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={v!r}" for n, v in zip(self.__slots__, self._values(), strict=True))
        return f"{self.__class__.__qualname__}({fields})"

    def __getstate__(self) -> tuple[Any, ...]:
        return self._values()

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)
