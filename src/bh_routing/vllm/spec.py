"""Strategies from one-line specifications, as the vLLM plugin reads them from the environment.

Grammar: ``NAME[:KEY=VALUE[,KEY=VALUE...]]`` with NAME one of ``topk``, ``topp``,
``weight_ratio``, ``bh``; the keys are the strategy's constructor arguments. Values are read as
int, float, ``true``/``false``, ``none`` or text. ``calibration=PATH`` loads a calibration file
(``OUT/calibration.safetensors`` of ``bh-routing run``) for ``bh:pvalues=calibrated``. Examples::

    bh:alpha=0.05,pvalues=empirical
    bh:alpha=0.1,pvalues=calibrated,calibration=runs/cal/calibration.safetensors
    topk:k=4
    topp:p=0.9,max_k=8
"""

from __future__ import annotations

import difflib
import re

from ..core import BH, Calibration, Strategy, TopK, TopP, WeightRatio

STRATEGIES: dict[str, type[Strategy]] = {"topk": TopK, "topp": TopP, "weight_ratio": WeightRatio, "bh": BH}
# the first constructor argument of each, which the constructors take by position
_POSITIONAL = {"topk": "k", "topp": "p", "weight_ratio": "beta", "bh": "alpha"}

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class StrategySpecError(ValueError):
    """A strategy specification that cannot be read; the message names the problem."""


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def strategy_from_spec(spec: str) -> Strategy:
    """A :class:`~bh_routing.core.Strategy` from a specification such as ``"bh:alpha=0.05"``.

    Parameters
    ----------
    spec : str
        See the module notes for the grammar.

    Raises
    ------
    StrategySpecError
        Unknown name or key, a malformed pair, a bad value (the strategy's own message), or a
        calibration file that cannot be read.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise StrategySpecError("strategy spec is empty; e.g. 'bh:alpha=0.05,pvalues=empirical'")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in STRATEGIES:
        close = difflib.get_close_matches(name, list(STRATEGIES), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise StrategySpecError(f"unknown strategy {name!r}{hint} (available: {', '.join(STRATEGIES)})")
    kwargs: dict = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or not text.strip():
            raise StrategySpecError(f"expected KEY=VALUE in strategy spec {spec!r}, got {item!r}")
        if key in kwargs:
            raise StrategySpecError(f"key {key!r} given twice in strategy spec {spec!r}")
        kwargs[key] = text.strip() if key == "calibration" else _value(text.strip())
    if "calibration" in kwargs:
        try:
            kwargs["calibration"] = Calibration.load(kwargs["calibration"])
        except (OSError, ValueError) as exc:
            raise StrategySpecError(f"strategy spec {spec!r}: {exc}") from None
    positional = _POSITIONAL[name]
    args = [kwargs.pop(positional)] if positional in kwargs else []
    try:
        return STRATEGIES[name](*args, **kwargs)
    except TypeError as exc:
        raise StrategySpecError(f"strategy spec {spec!r}: {exc}") from None
    except ValueError as exc:
        raise StrategySpecError(f"strategy spec {spec!r}: {exc}") from None
