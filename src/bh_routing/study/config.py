"""The configuration of a run: one small dataclass, loadable from YAML or TOML.

The checks of single values live in :mod:`bh_routing.core` (α, temperature, k bounds, choices);
:meth:`RunConfig.validate` calls them and turns their errors into :class:`ConfigError`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..analysis.settings import DEFAULT_ALPHAS, RoutingSettings
from ..core import BHRoutingError
from ..core._validate import check_alpha, check_choice, check_k_bounds, check_temperature
from ..core.calibration import NULL_CHOICES
from ..core.families import (
    BUILTIN, StrategyContractError, StrategySpecError, check_contract, get_family, strategy_from_spec,
)
from ..core.strategies import PVALUE_METHODS

#: BH variants a run can sweep: a p-value method, "-router" for BH's count with the router's
#: experts (``BH(selection="router")``), "-wide" for max_k = 2 x the model's top-k (at most E).
VARIANTS = tuple(f"{m}{sel}{wide}" for m in PVALUE_METHODS for sel in ("", "-router") for wide in ("", "-wide"))
#: Swept by default: the three nulls in p-value order, the calibrated null with router selection,
#: and that with max_k above the model's top-k. The router variants of the two rank-consistent
#: nulls select the same experts as their p-value order (tests/core/test_selection.py), so they
#: would repeat those runs.
DEFAULT_VARIANTS = ["empirical", "calibrated", "standardized", "calibrated-router", "calibrated-router-wide"]
AUTO = "auto"  # bh_pvalues chosen by measurement on the calibration windows (analysis.variants)

DEFAULT_TEMPERATURES = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0]
DEFAULT_TOPP = list(BUILTIN["topp"].grid)
DEFAULT_RATIOS = list(BUILTIN["weight_ratio"].grid)
FRONTIER_FAMILIES = tuple(BUILTIN)  # every built-in family, in the table's order
CERTIFY_FAMILIES = tuple(BUILTIN)  # "bh": BH with the empirical null
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DOWNSTREAM_TASKS = ["bhr_python_mc", "bhr_heldout_rolling"]  # the two offline lm-eval tasks


class ConfigError(BHRoutingError, ValueError):
    """A run configuration that cannot work; the message names the field."""


def _core(check, *args, **kwargs):
    """Call a core validator; its ValueError/TypeError becomes a ConfigError with the same message."""
    try:
        return check(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _each(name: str, values, check) -> None:
    """``values`` is a non-empty list whose every element passes ``check``."""
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{name} must be a list, got {values!r}")
    if not values:
        raise ConfigError(f"{name} must not be empty")
    for v in values:
        _core(check, v, name=f"{name} values")


@dataclass
class RunConfig:
    model: str | None = None  # hub id or local folder; None = the embedded model
    device: str | None = None  # "cpu", "cuda", ...; None = cuda if available
    dtype: str | None = None  # "float32" | "bfloat16" | "float16"; None = the device policy (models/device.py)
    experts_backend: str | None = None  # transformers' experts implementation; None/"auto" = the device policy
    batch_size: int | None = None  # on a GPU, the most sequences per forward pass; None = from the free memory
    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))  # the α sweep (BH's knob)
    alpha: float = 0.05  # BH level of the single-setting analyses
    temperatures: list[float] = field(default_factory=lambda: list(DEFAULT_TEMPERATURES))
    pvalues: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))  # BH variants swept (VARIANTS)
    bh_pvalues: str = AUTO  # the BH variant of the single-setting analyses; "auto": measured on calibration text
    strategies: list[str] = field(default_factory=lambda: list(FRONTIER_FAMILIES))  # families compared: names or module:Class
    topp_values: list[float] = field(default_factory=lambda: list(DEFAULT_TOPP))  # top-p's knob values
    ratio_values: list[float] = field(default_factory=lambda: list(DEFAULT_RATIOS))  # the weight ratio's knob values
    grids: dict = field(default_factory=dict)  # other families' knob values {family: [values]}; default: the family's grid
    min_k: int = 1  # every token gets at least this many experts
    max_k: int | None = None  # None = the model's top-k
    prompts_file: str | None = None  # one prompt per line; None = the 10 default prompts
    eval_text: str | None = None  # a UTF-8 text file, or "hf:NAME[:CONFIG]:SPLIT" (a `datasets` id, online); None = embedded
    eval_edition: int = 2  # the embedded text's edition: 2 (256 documents), or 1 (the first 64, split as before) to repeat older runs
    calibration: str | None = None  # a saved calibration; None = fit on the calibration split
    null: str = "unrouted"  # calibration null sample: "unrouted" | "all"
    seq_len: int = 256  # tokens per evaluation sequence
    eval_sequences: int = 64  # sequences for quality and sweeps
    calib_sequences: int = 128  # sequences for calibration (disjoint from the evaluation ones)
    reservoir_size: int = 8192  # calibration values kept per (layer, expert)
    new_tokens: int = 24  # generated tokens per baseline prompt
    seed: int = 42
    quick: bool = False  # smoke run: fewer sequences and sweep points
    matched_baselines: bool = True  # also match BH (bh_pvalues) to each top-p / weight-ratio setting's k (about half the matched step's time)
    # downstream evaluation (lm-evaluation-harness); the step runs only when tasks are named
    downstream_tasks: list[str] = field(default_factory=list)  # lm-eval task or group names; [] = no step
    downstream_alphas: list[float] = field(default_factory=lambda: [0.05])  # one BH strategy per α
    downstream_pvalues: str = "empirical"  # p-values of those BH strategies
    downstream_include_path: str | None = None  # an extra folder of lm-eval task YAMLs
    downstream_limit: float | None = None  # at most this many documents per task (a fraction if < 1)
    downstream_batch_size: int = 1  # lm-eval batch size (1 counts experts without padding)
    downstream_shard: list[int] | None = None  # [rank, world]: every world-th document from rank
    downstream_backend: str = "hf"  # lm-eval model: "hf" (transformers) or "vllm" (needs make setup-vllm)
    downstream_strategies: list[str] = field(default_factory=list)  # more strategies by spec, e.g. "entropy:scale=1.5"
    # certified routing (Learn-then-Test; the ``certify`` step, analysis/certify.py)
    certify_risk: str = "top1"  # "top1" (greedy-token disagreement) | "loss" (nats/token increase, clipped to [0, 1])
    certify_epsilon: float = 0.1  # ε: certify mean risk <= ε on new calibration-like sequences ...
    certify_delta: float = 0.1  # ... with probability >= 1 - δ
    certify_families: list[str] = field(default_factory=lambda: list(CERTIFY_FAMILIES))  # grids tested (δ/F each)
    certify_tokens: int = 64  # certify on the first tokens of each calibration/evaluation sequence; 0 = all of it
    certify_grid: str = "coarse"  # "coarse" (every other grid point, frontier up to 2ε) | "fine" (every point, up to 3ε)

    def effective(self) -> RunConfig:
        """The configuration actually run (``quick`` shrinks sizes)."""
        if not self.quick:
            return self
        c = RunConfig(**asdict(self))
        c.eval_sequences, c.calib_sequences, c.seq_len = min(c.eval_sequences, 6), min(c.calib_sequences, 16), min(c.seq_len, 128)
        c.alphas = c.alphas[::2] if len(c.alphas) > 4 else c.alphas
        if len(c.temperatures) > 4:  # every other value, and T = 1 (the untempered test) always
            c.temperatures = sorted(set(c.temperatures[::2]) | ({1.0} & set(c.temperatures)))
        c.topp_values, c.ratio_values = c.topp_values[::2], c.ratio_values[::2]
        c.grids = {f: list(v)[::2] for f, v in c.grids.items()}
        c.new_tokens = min(c.new_tokens, 8)
        c.reservoir_size = min(c.reservoir_size, 2048)
        return c

    def validate(self) -> RunConfig:
        """Raise ConfigError for the first bad field; return self."""
        _each("alphas", self.alphas, check_alpha)
        _core(check_alpha, self.alpha)
        _each("temperatures", self.temperatures, check_temperature)
        _each("topp_values", self.topp_values, check_alpha)
        _each("ratio_values", self.ratio_values, check_alpha)
        if not isinstance(self.pvalues, (list, tuple)) or not self.pvalues:
            raise ConfigError(f"pvalues must be a non-empty list, got {self.pvalues!r}")
        _core(check_choice, self.downstream_pvalues, PVALUE_METHODS, name="pvalues")  # lm-eval's --pvalues
        for m in self.pvalues:
            _core(check_choice, m, VARIANTS, name="pvalues")
        if self.bh_pvalues != AUTO:
            _core(check_choice, self.bh_pvalues, tuple(v for v in VARIANTS if "wide" not in v) + (AUTO,), name="bh_pvalues")
            if self.bh_pvalues not in self.pvalues:
                raise ConfigError(f"bh_pvalues {self.bh_pvalues!r} must be one of the swept pvalues {self.pvalues}")
        if not isinstance(self.strategies, (list, tuple)) or not self.strategies:
            raise ConfigError(f"strategies must be a non-empty list, got {self.strategies!r}")
        for s in self.strategies:
            self._check_family(s, "strategies")
        if not isinstance(self.grids, dict):
            raise ConfigError(f"grids must be a mapping of family -> values, got {self.grids!r}")
        for fam, values in self.grids.items():
            cls = self._check_family(fam, "grids")
            if not isinstance(values, (list, tuple)) or not values or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ConfigError(f"grids[{fam!r}] must be a non-empty list of numbers, got {values!r}")
            for v in values:
                try:
                    cls(**{cls.knob: v})
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"grids[{fam!r}]: {cls.knob}={v!r}: {exc}") from None
        _core(check_choice, self.null, NULL_CHOICES, name="null")
        if self.dtype is not None:
            _core(check_choice, self.dtype, DTYPES, name="dtype")
        if self.experts_backend is not None:
            from ..models.device import EXPERTS_BACKENDS

            _core(check_choice, self.experts_backend, EXPERTS_BACKENDS, name="experts_backend")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ConfigError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if self.device is not None:
            from ..models import check_device

            _core(check_device, self.device)
        for name in ("seq_len", "eval_sequences", "calib_sequences", "reservoir_size", "new_tokens", "downstream_batch_size"):
            v, least = getattr(self, name), 2 if name in ("seq_len", "eval_sequences") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ConfigError(f"{name} must be an int >= {least}, got {v!r}")
        if not isinstance(self.matched_baselines, bool):
            raise ConfigError(f"matched_baselines must be true or false, got {self.matched_baselines!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an int in [0, 2**32), got {self.seed!r}")
        _core(check_k_bounds, self.min_k, self.max_k, least=1)
        _each("downstream_alphas", self.downstream_alphas, check_alpha)
        _core(check_choice, self.downstream_backend, ("hf", "vllm"), name="downstream_backend")
        if not isinstance(self.downstream_strategies, (list, tuple)):
            raise ConfigError(f"downstream_strategies must be a list of strategy specs, got {self.downstream_strategies!r}")
        for spec in self.downstream_strategies:
            try:
                strategy_from_spec(spec)
            except StrategySpecError as exc:
                raise ConfigError(f"downstream_strategies: {exc}") from None
        if self.downstream_tasks:
            from ..analysis.downstream.tasks import check_settings, include_paths

            check_settings(self.downstream_tasks, limit=self.downstream_limit, shard=self.downstream_shard)
            include_paths(self.downstream_include_path)
        from ..analysis.certify import CertificateError, check_certify_args, check_families

        try:
            check_certify_args(risk=self.certify_risk, epsilon=self.certify_epsilon, delta=self.certify_delta,
                               prefix="certify_")
            check_families(self.certify_families)
            _core(check_choice, self.certify_grid, ("coarse", "fine"), name="certify_grid")
        except CertificateError as exc:
            raise ConfigError(str(exc)) from None
        t = self.certify_tokens
        if isinstance(t, bool) or not isinstance(t, int) or (t < 2 and t != 0):
            raise ConfigError(f"certify_tokens must be 0 (the whole sequence) or an int >= 2, got {t!r}")
        if self.eval_edition not in (1, 2) or isinstance(self.eval_edition, bool):
            raise ConfigError(f"eval_edition must be 1 or 2, got {self.eval_edition!r}")
        for name in ("prompts_file", "eval_text", "calibration"):
            v = getattr(self, name)
            if name == "eval_text" and isinstance(v, str) and v.startswith("hf:"):
                parse_dataset_id(v)
                continue
            if v is not None and not Path(v).is_file():
                raise ConfigError(f"{name} not found: {v}")
        return self

    @staticmethod
    def _check_family(name, where: str):
        """The family class of a name in ``strategies``/``grids`` whose rule keeps the contract on
        synthetic router logits (user families; the built-in ones are tested); ConfigError otherwise."""
        try:
            cls = get_family(name)
            if cls.name not in BUILTIN and cls.name != "bh":
                for v in (min(cls.grid), max(cls.grid)):
                    check_contract(cls(**{cls.knob: v}))
        except (StrategySpecError, StrategyContractError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: routing rule {name!r} at its grid's ends: {exc}") from None
        return cls

    def routing(self, variant: str | None = None) -> RoutingSettings:
        """The routing settings of the studies, with BH's reported ``variant`` (default: ``bh_pvalues``,
        or with "auto" the first variant swept; a run passes the variant it chose)."""
        if variant is None:
            variant = self.bh_pvalues if self.bh_pvalues != AUTO else next(
                (v for v in self.pvalues if "wide" not in v), self.pvalues[0])
        families = tuple(dict.fromkeys(get_family(s).name for s in self.strategies))
        grids = {"topp": tuple(self.topp_values), "weight_ratio": tuple(self.ratio_values),
                 **{get_family(f).name: tuple(v) for f, v in self.grids.items()}}
        return RoutingSettings(
            min_k=self.min_k, max_k=self.max_k, alpha=self.alpha, variant=variant, variants=tuple(self.pvalues),
            alphas=tuple(self.alphas), temperatures=tuple(self.temperatures),
            families=tuple(f for f in families if f != "bh"), grids=grids)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_dataset_id(spec: str) -> tuple[str, str | None, str]:
    """``"hf:NAME[:CONFIG]:SPLIT"`` -> (name, config or None, split)."""
    parts = spec[len("hf:"):].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(f"eval_text dataset must look like hf:NAME[:CONFIG]:SPLIT, got {spec!r}")
    return parts[0], parts[1] if len(parts) == 3 else None, parts[-1]


# settings of older releases that no longer exist (ignored in a results file, refused elsewhere)
REMOVED_FIELDS = {"n_resamples": "every interval is a t-interval or jackknife over documents; nothing resamples"}


def load_config_file(path: str | Path) -> dict:
    """Read a run configuration into a dict of RunConfig fields.

    YAML (.yaml/.yml) or TOML (.toml) files of settings, or a run's ``bh_routing_results.json``
    (its ``config``), so that a finished run can be repeated exactly.
    """
    from .profiles import PROFILES

    if str(path) in PROFILES:  # a named profile, e.g. "colab-t4"
        return dict(PROFILES[str(path)])
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {str(exc).splitlines()[0]}") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            import json

            data = json.loads(text)
            data = data.get("config", data) if isinstance(data, dict) else data
        else:
            raise ConfigError(f"config file must end in .yaml, .yml, .toml or .json, got {path.name}")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    if path.suffix == ".json":  # a results file of an older release: settings since removed are dropped
        data = {k: v for k, v in data.items() if k not in REMOVED_FIELDS}
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        import difflib

        hints = [f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, known, 1)) else u for u in unknown]
        gone = [f"{u} ({REMOVED_FIELDS[u]})" for u in unknown if u in REMOVED_FIELDS]
        if gone:
            raise ConfigError(f"config keys no longer used: {', '.join(gone)}")
        raise ConfigError(f"unknown config keys: {', '.join(hints)}")
    return data
