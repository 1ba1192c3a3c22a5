"""A name -> item table whose each name is registered once (steps, summaries, figures, sections)."""

from __future__ import annotations


class Registry(dict):
    """Name -> registered item (anything with a ``name``), in registration order; each name once."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, item):
        if item.name in self:
            raise ValueError(f"{self.kind} {item.name!r} is registered twice")
        self[item.name] = item
        return item
