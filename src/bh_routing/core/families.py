"""The one table of strategy families, and the spec strings that name a strategy.

A *family* is a :class:`~bh_routing.core.strategies.Strategy` subclass; its class attributes say
everything the run, the reports and the serving layer need (``name``, ``knob``, ``grid``,
``label``, ``color``). It is found by name in this order:

1. the built-in families and those registered with :func:`register` (a decorator);
2. the ``bh_routing.strategies`` entry-point group (an installed package adds families:
   ``[project.entry-points."bh_routing.strategies"] myrule = "mypkg.rules:MyRule"``);
3. ``module:Class`` - a class importable from the current environment.

Spec strings, read by :func:`strategy_from_spec` and written by :func:`spec_of`:
``NAME[:KEY=VALUE[,KEY=VALUE...]]`` or ``module:Class[:KEY=VALUE,...]``. The keys are the
constructor's arguments; values are read as int, float, ``true``/``false``, ``none`` or text;
``calibration=PATH`` loads a calibration file. Examples::

    bh:alpha=0.05,pvalues=calibrated,selection=router,calibration=runs/x/calibration.safetensors
    topp:p=0.8
    entropy:scale=1.5
    mymodule:MyRule:scale=1.5
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from importlib.metadata import entry_points

import torch

from .errors import BHRoutingError
from .strategies import BH, Strategy, TopK, TopP, WeightRatio
from .strategies.entropy import Entropy

ENTRY_POINT_GROUP = "bh_routing.strategies"
#: The built-in families in report order; :func:`register` adds to a copy of this per process.
BUILTIN: dict[str, type[Strategy]] = {c.name: c for c in (TopK, TopP, WeightRatio, Entropy, BH)}
#: The rank baselines: each takes a prefix of the router's order whose length a threshold on the
#: sorted probabilities sets, so their mean k is known in closed form on recorded logits (the
#: oracle's exact matching) and BH is matched to each of their settings; top-k first.
RANK_BASELINES: tuple[str, ...] = tuple(c.name for c in (TopK, TopP, WeightRatio))
_REGISTERED: dict[str, type[Strategy]] = dict(BUILTIN)

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_IDENT = re.compile(r"^[A-Za-z_][\w.]*$")


class StrategySpecError(BHRoutingError, ValueError):
    """A family or strategy specification that cannot be read; the message names the problem."""


class StrategyContractError(BHRoutingError, ValueError):
    """A routing rule that breaks the :meth:`Strategy.choose` contract; the message names the rule."""


def check_family(cls) -> type[Strategy]:
    """``cls`` is a usable family: a Strategy subclass with a name, a knob its constructor takes,
    and a non-empty grid of numbers. Raises :class:`StrategyContractError`."""
    where = getattr(cls, "__qualname__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise StrategyContractError(f"routing rule {where} must be a subclass of bh_routing.Strategy")
    where = f"{cls.__module__}:{cls.__qualname__}"
    if cls.choose is Strategy.choose:
        raise StrategyContractError(f"routing rule {where} must implement choose(logits, probs, *, layer, model_top_k)")
    if not isinstance(cls.name, str) or not cls.name or cls.name == Strategy.name or ":" in cls.name or "," in cls.name:
        raise StrategyContractError(f"routing rule {where} needs a class attribute name (text without ':' or ','), got {cls.name!r}")
    params = inspect.signature(cls.__init__).parameters
    if not isinstance(cls.knob, str) or cls.knob not in params:
        raise StrategyContractError(
            f"routing rule {where}: knob must name a constructor parameter ({', '.join(p for p in params if p != 'self')}), got {cls.knob!r}")
    grid = cls.grid
    if (not isinstance(grid, (tuple, list)) or not grid
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in grid)):
        raise StrategyContractError(f"routing rule {where}: grid must be a non-empty tuple of numbers, got {grid!r}")
    return cls


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a family known by its ``name`` in this process.

    >>> @register
    ... class Half(Strategy):
    ...     name, knob, grid = "half", "k", (1, 2, 4)
    ...     ...
    """
    check_family(cls)
    old = _REGISTERED.get(cls.name)
    if old is not None and old is not cls and cls.name in BUILTIN:
        raise StrategyContractError(f"routing rule {cls.__module__}:{cls.__qualname__}: name {cls.name!r} is a built-in family")
    _REGISTERED[cls.name] = cls
    return cls


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _import_class(path: str) -> type[Strategy]:
    module, _, attr = path.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:  # the command's folder, as uvicorn's --app-dir
        sys.path.append(os.getcwd())
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise StrategySpecError(f"cannot import routing rule {path!r}: {exc}") from None
    cls = getattr(mod, attr, None)
    if cls is None:
        raise StrategySpecError(f"routing rule {path!r}: module {module!r} has no {attr!r}")
    return check_family(cls)


def available() -> list[str]:
    """The family names known now: built-in, registered, and from entry points."""
    return list(dict.fromkeys([*_REGISTERED, *_entry_points()]))


def get_family(name: str) -> type[Strategy]:
    """The family class for a name or ``module:Class``; :class:`StrategySpecError` otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise StrategySpecError(f"a strategy family must be a name, got {name!r}")
    name = name.strip()
    if name in _REGISTERED:
        return _REGISTERED[name]
    if ":" in name:
        return register(_import_class(name)) if name.partition(":")[2] else _import_class(name)
    eps = _entry_points()
    if name in eps:
        try:
            cls = eps[name].load()
        except Exception as exc:  # a broken installed package: one line
            raise StrategySpecError(f"routing rule {name!r} from entry point {eps[name].value!r} failed to load: {exc}") from None
        return register(check_family(cls))
    close = difflib.get_close_matches(name.lower(), available(), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise StrategySpecError(f"unknown strategy {name!r}{hint} (available: {', '.join(available())}, or module:Class)")


def family_name(name: str) -> str:
    """The table's name of a family given by name or ``module:Class`` (registers the latter)."""
    return get_family(name).name


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


def _split(spec: str) -> tuple[str, str]:
    """``(family, "k=v,...")``: the family part is a name or ``module:Class``."""
    head, _, rest = spec.partition(":")
    head = head.strip()
    if head in _REGISTERED or head.lower() in _REGISTERED or head in _entry_points():
        return (head if head in _REGISTERED or head in _entry_points() else head.lower()), rest
    cls, _, params = rest.partition(":")
    if rest and "=" not in cls and _IDENT.match(cls.strip()) and _IDENT.match(head):
        return f"{head}:{cls.strip()}", params
    return head.lower(), rest


def parse_spec(spec: str) -> tuple[type[Strategy], dict]:
    """``(family class, constructor keyword arguments)`` of a spec string (values read, not built)."""
    if not isinstance(spec, str) or not spec.strip():
        raise StrategySpecError("strategy spec is empty; e.g. 'bh:alpha=0.05,pvalues=empirical'")
    name, rest = _split(spec.strip())
    cls = get_family(name)
    kwargs: dict = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or not text.strip():
            raise StrategySpecError(f"expected KEY=VALUE in strategy spec {spec!r}, got {item!r}")
        if key in kwargs:
            raise StrategySpecError(f"key {key!r} given twice in strategy spec {spec!r}")
        kwargs[key] = text.strip() if key == "calibration" else _value(text.strip())
    return cls, kwargs


def build(cls: type[Strategy], kwargs: dict, *, spec: str | None = None) -> Strategy:
    """``cls(**kwargs)``, its TypeError/ValueError as one :class:`StrategySpecError` line."""
    where = spec if spec is not None else cls.name
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("calibration"), str):
        from .calibration import Calibration

        try:
            kwargs["calibration"] = Calibration.load(kwargs["calibration"])
        except (OSError, ValueError) as exc:
            raise StrategySpecError(f"strategy spec {where!r}: {exc}") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise StrategySpecError(f"strategy spec {where!r}: {exc}") from None


def strategy_from_spec(spec: str) -> Strategy:
    """A strategy from a spec string such as ``"bh:alpha=0.05"`` or ``"mymodule:MyRule:scale=1.5"``.

    Raises
    ------
    StrategySpecError
        Unknown name or key, a malformed pair, a bad value (the strategy's own message), or a
        calibration file that cannot be read.
    """
    cls, kwargs = parse_spec(spec)
    return build(cls, kwargs, spec=spec)


def family_spec(cls: type[Strategy]) -> str:
    """The name a spec uses for ``cls``: its table name, or ``module:Class`` when not in the table."""
    return cls.name if _REGISTERED.get(cls.name) is cls and cls.name in BUILTIN else f"{cls.__module__}:{cls.__qualname__}"


def spec_of(strategy: Strategy) -> str:
    """The spec string of a strategy (without its calibration, which is a file): the inverse of
    :func:`strategy_from_spec` for every JSON-able constructor argument."""
    params = {k: v for k, v in strategy.describe().items() if k != "name"}
    items = ",".join(f"{k}={'none' if v is None else str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())
    head = family_spec(type(strategy))
    return f"{head}:{items}" if items else head


def describe_to_strategy(desc: dict) -> Strategy:
    """A strategy from its :meth:`Strategy.describe` dict (as results and certificates store it)."""
    desc = dict(desc)
    name = desc.pop("name", None)
    cls = get_family(desc.pop("family", None) or name)
    return build(cls, desc)


def check_contract(strategy: Strategy, *, num_experts: int = 64, model_top_k: int = 8, tokens: int = 256,
                   seed: int = 0) -> None:
    """Route synthetic router logits (standard normal, ``tokens`` x ``num_experts``) and check the
    result: counts in [1, width], ids in [0, E), no id twice among a token's chosen experts,
    finite weights. Raises :class:`StrategyContractError` naming the rule and the breach."""
    where = f"{type(strategy).__module__}:{type(strategy).__qualname__}"
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, num_experts, generator=gen)  # (T, E)
    probs = torch.softmax(logits, dim=-1)
    try:
        order, counts, width = strategy.choose(logits, probs, layer=0, model_top_k=model_top_k)
    except Exception as exc:
        raise StrategyContractError(f"routing rule {where} failed on synthetic logits: {type(exc).__name__}: {exc}") from None
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= num_experts:
        raise StrategyContractError(f"routing rule {where}: width must be an int in [1, {num_experts}], got {width!r}")
    if not (isinstance(order, torch.Tensor) and order.dim() == 2 and order.shape[0] == tokens and order.shape[1] >= width
            and not order.is_floating_point()):
        raise StrategyContractError(f"routing rule {where}: order must be an integer tensor of shape (T, >= width)")
    if not (isinstance(counts, torch.Tensor) and counts.shape == (tokens,)):
        raise StrategyContractError(f"routing rule {where}: counts must be a tensor of shape (T,)")
    if bool((counts < 1).any()) or bool((counts > width).any()):
        raise StrategyContractError(
            f"routing rule {where}: counts must lie in [1, width={width}], got {int(counts.min())} to {int(counts.max())}")
    ids = order[:, :width]
    used = torch.arange(width) < counts.unsqueeze(-1)  # (T, W)
    if bool(((ids < 0) | (ids >= num_experts))[used].any()):
        raise StrategyContractError(f"routing rule {where}: expert ids must lie in [0, {num_experts}), got {int(ids[used].min())} to {int(ids[used].max())}")
    mask = torch.zeros(tokens, num_experts + 1, dtype=torch.long).scatter_add_(
        1, torch.where(used, ids, num_experts).long(), used.long())[:, :num_experts]
    if bool((mask > 1).any()):
        raise StrategyContractError(f"routing rule {where}: a token's chosen experts repeat an id")
    result = strategy.route(logits, layer=0, model_top_k=model_top_k)
    if not bool(torch.isfinite(result.weights).all()):
        raise StrategyContractError(f"routing rule {where}: its weights are not finite (NaN or inf)")
