"""The registry of figures and RESULTS.md sections: name -> function, with the results it needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.registry import Registry


@dataclass(frozen=True)
class Figure:
    """A PNG drawn from a results dict: ``draw(res, path) -> path``."""

    name: str  # file name, e.g. "alpha_sensitivity.png"
    draw: Callable[[dict, Path], Path]
    needs: tuple[str, ...] = ()  # keys of res["steps"] or res["derived"]; drawn only when all are there


@dataclass(frozen=True)
class Section:
    """A part of RESULTS.md: ``render(res, figures) -> list of lines`` (``figures``: names drawn)."""

    name: str
    render: Callable[[dict, list[str]], list[str]]
    needs: tuple[str, ...] = ()  # keys of res["steps"] or res["derived"]; written only when all are there
    order: int = 100  # place in the report (seed sections 10-90, downstream 95; "Reproduce" is last)


FIGURES: Registry = Registry("figure")
SECTIONS: Registry = Registry("section")


def register_figure(figure: Figure) -> Figure:
    return FIGURES.add(figure)


def register_section(section: Section) -> Section:
    return SECTIONS.add(section)


def available(res: dict) -> set[str]:
    """The keys a figure or section may need: finished steps and derived summaries."""
    return set(res["steps"]) | set(res["derived"])


def sections_in_order() -> list[Section]:
    return sorted(SECTIONS.values(), key=lambda s: s.order)  # stable: registration order among equals
