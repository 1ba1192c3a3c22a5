"""The routing settings the studies share, and the strategies they build from the table of families.

A study takes a :class:`RoutingSettings` (a run builds it from its configuration once the BH
variant is known, :meth:`bh_routing.study.config.RunConfig.routing`) instead of the run's whole
configuration, so it can be called from a notebook or a test without a run.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from ..core import BH, Calibration, Strategy
from ..core.families import BUILTIN, get_family

#: BH variants: a p-value method, "-router" for BH's count with the router's experts
#: (``BH(selection="router")``), "-wide" for max_k = 2 x the model's top-k (at most E).
DEFAULT_ALPHAS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def parse_variant(variant: str) -> tuple[str, str, bool]:
    """``"calibrated-router-wide"`` -> (p-value method, selection, wide)."""
    method, *flags = variant.split("-")
    return method, "router" if "router" in flags else "pvalue", "wide" in flags


def bh_label(method: str, alpha: float, temperature: float = 1.0) -> str:
    t = "" if temperature == 1.0 else f", T={temperature:g}"
    return f"BH-{method}(α={alpha:g}{t})"


def setting_label(family: str, value) -> str:
    """``"TopP(p=0.5)"``: the family's class name, its knob's symbol and the value."""
    cls = get_family(family)
    return f"{cls.__name__}({getattr(cls, 'knob_symbol', cls.knob)}={value:g})"


@dataclass(frozen=True)
class RoutingSettings:
    """What the studies need to know of a run's routing (every field has the run's meaning)."""

    min_k: int = 1  # every token gets at least this many experts
    max_k: int | None = None  # None = the model's top-k
    alpha: float = 0.05  # BH level of the single-setting analyses
    variant: str = "empirical"  # the reported BH variant (a p-value method, "-router")
    variants: tuple[str, ...] = ("empirical",)  # BH variants swept
    alphas: tuple[float, ...] = DEFAULT_ALPHAS  # the α sweep
    temperatures: tuple[float, ...] = (1.0,)  # the temperature sweep (calibrated nulls only)
    families: tuple[str, ...] = tuple(f for f in BUILTIN if f != "bh")  # the non-BH families compared
    grids: dict = field(default_factory=dict)  # family -> knob values (default: the family's own grid)

    def grid(self, family: str, *, top_k: int) -> tuple:
        """The knob values swept for ``family`` (top-k: 1..K always)."""
        if get_family(family).name == "topk":
            return tuple(range(1, top_k + 1))
        return tuple(self.grids.get(family) or get_family(family).grid)

    def strategy(self, family: str, value) -> Strategy:
        """``family`` at knob ``value``, with this run's min_k and max_k where its constructor takes them."""
        cls = get_family(family)
        params = inspect.signature(cls.__init__).parameters
        extra = {k: v for k, v in (("min_k", self.min_k), ("max_k", self.max_k)) if k in params}
        return cls(**{cls.knob: value}, **extra)

    def bh(self, variant: str | None = None, calibration: Calibration | None = None, *, alpha: float | None = None,
           temperature: float = 1.0, wide_k: int | None = None) -> BH:
        """The BH strategy of a variant (default the reported one) at ``alpha`` (default the run's)."""
        variant = self.variant if variant is None else variant
        method, selection, wide = parse_variant(variant)
        if wide and wide_k is None:
            raise ValueError(f"variant {variant!r} needs wide_k (max_k above the model's top-k)")
        return BH(self.alpha if alpha is None else alpha, temperature=temperature, min_k=self.min_k,
                  max_k=wide_k if wide else self.max_k, pvalues=method,
                  calibration=None if method == "empirical" else calibration, selection=selection)
