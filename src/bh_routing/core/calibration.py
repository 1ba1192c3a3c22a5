"""Calibration nulls for conformal p-values: fitted in a stream, saved as safetensors.

A calibration holds, for each MoE layer and expert, a uniform random sample (at most
``reservoir_size`` values) of that expert's router logits on the tokens of a calibration text
that form its *null*: either the tokens the model did not route to it (``null="unrouted"``) or
all tokens (``null="all"``). Memory is O(layers x experts x reservoir_size) whatever the text
length: each update keeps the values with the smallest random keys (bottom-R sampling, a
mergeable form of reservoir sampling), so the kept values are a uniform sample of those seen.

Which null is the default, and why: ``"unrouted"``. The ``"all"`` sample mixes in the logits of
tokens the model routed to the expert, which fattens the null's upper tail, so every p-value grows
and BH selects fewer experts at the same alpha. The "unrouted" sample is the logit distribution
when the expert was not in the model's top-k: p-values against it are valid for "e is not in
this token's top-k" (``"all"`` is conservative for that), not for "e is not needed" - what alpha
then bounds for needed experts is measured by :mod:`bh_routing.analysis.oracle`. Both need the
calibration tokens to be exchangeable with the routed ones, including the routing of the layers
below (:mod:`bh_routing.core.sequential`). The
measured difference on the embedded model is in ``docs/calibration_nulls.md``, written by
``scripts/compare_nulls.py``: at equal mean experts per token the "unrouted" null's held-out
loss was lower (by 0.23-0.27 nats/token where the two α sweeps overlap), and at equal α "all"
activates far fewer experts at a much higher perplexity.

The same pass also keeps, per layer, a pooled sample (at most ``pooled_size`` values) of the
*standardised* scores ``(z - median) / (1.4826 MAD)`` of the null (token, expert) pairs, each
token standardised over its own E logits: the null of :func:`standardized_pvalues`. Files
written before it existed (format 1) still load and give calibrated p-values; asking them for
standardised p-values raises a message that says to calibrate again.

Layer indices are MoE-layer ordinals 0..L-1 (the i-th MoE block of the model), not decoder indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ._validate import check_choice, check_logits
from .errors import BHRoutingError
from .files import atomic_path
from .pvalues import MAD_TO_SD, _lower_median, conformal_pvalues, neg_zscores, standardized_pvalues

NULL_CHOICES = ("unrouted", "all")
FORMAT_VERSION = "2"  # 2: adds the pooled standardised null (std_sorted, std_count); 1 still loads
_TENSORS_V1 = {"null_sorted", "null_count"}
_TENSORS_V2 = _TENSORS_V1 | {"std_sorted", "std_count"}


class CalibrationMismatchError(BHRoutingError, ValueError):
    """A calibration was loaded against a model it was not made for."""


@dataclass(frozen=True)
class Calibration:
    """Per-layer, per-expert null samples for :func:`conformal_pvalues`."""

    model_name: str  # where the model came from (hub id or folder), for messages
    model_fingerprint: str  # hash of the router weights: identifies the model exactly
    num_layers: int  # MoE layers
    num_experts: int  # experts per MoE layer
    top_k: int  # the model's own k (defines the "unrouted" null)
    null: str  # "unrouted" or "all"
    null_sorted: torch.Tensor  # (L, E, R) float32, ascending, -inf padding on the left
    null_count: torch.Tensor  # (L, E) int64, real values per row (<= R)
    num_tokens: int  # calibration tokens seen (per layer)
    std_sorted: torch.Tensor | None = None  # (L, Rp) float32 pooled standardised null, ascending; None: format 1
    std_count: torch.Tensor | None = None  # (L,) int64, real values per layer (<= Rp)

    def pvalues(self, logits: torch.Tensor, layer: int, *, temperature: float = 1.0) -> torch.Tensor:
        """Conformal p-values of ``logits`` (T, E) at MoE layer ``layer``; see conformal_pvalues."""
        self._check_layer(logits, layer)
        return conformal_pvalues(
            logits, self.null_sorted[layer], self.null_count[layer], temperature=temperature
        )

    def standardized_pvalues(self, logits: torch.Tensor, layer: int, *, temperature: float = 1.0) -> torch.Tensor:
        """Standardised p-values of ``logits`` (T, E) at MoE layer ``layer``; see standardized_pvalues."""
        self._check_layer(logits, layer)
        table, count = self.standardized_null(layer)
        return standardized_pvalues(logits, table, count, temperature=temperature)

    def standardized_null(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled standardised null of ``layer``: (Rp,) ascending values and their count."""
        if self.std_sorted is None:
            raise ValueError(
                "this calibration has no standardised null (it was saved by an older bh-routing, "
                "calibration format 1): run `bh-routing calibrate` again to use pvalues='standardized'"
            )
        return self.std_sorted[layer], self.std_count[layer]

    def _check_layer(self, logits: torch.Tensor, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be in [0, {self.num_layers}), got {layer}")
        if logits.shape[-1] != self.num_experts:
            raise CalibrationMismatchError(
                f"calibration has {self.num_experts} experts, the logits have {logits.shape[-1]}"
            )

    def to(self, device: torch.device | str) -> Calibration:
        """A copy whose tables live on ``device``."""
        from dataclasses import replace

        moved = {"null_sorted": self.null_sorted.to(device), "null_count": self.null_count.to(device)}
        if self.std_sorted is not None:
            moved.update(std_sorted=self.std_sorted.to(device), std_count=self.std_count.to(device))
        return replace(self, **moved)

    def check_matches(
        self, *, model_fingerprint: str, num_layers: int, num_experts: int, model_name: str = "?"
    ) -> None:
        """Raise :class:`CalibrationMismatchError` unless this calibration was made for that model."""
        mine = f"{self.model_name} ({self.num_layers} MoE layers x {self.num_experts} experts)"
        theirs = f"{model_name} ({num_layers} MoE layers x {num_experts} experts)"
        if (num_layers, num_experts) != (self.num_layers, self.num_experts):
            raise CalibrationMismatchError(f"calibration was made for {mine}, not for {theirs}")
        if model_fingerprint != self.model_fingerprint:
            raise CalibrationMismatchError(
                f"calibration was made for {mine}, whose router weights differ from {theirs}"
            )

    def save(self, path: str | Path) -> Path:
        """Write a ``.safetensors`` file (tensors + JSON metadata), atomically."""
        path = Path(path)
        meta = {
            "format": "bh_routing.calibration",
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "model_fingerprint": self.model_fingerprint,
            "num_layers": str(self.num_layers),
            "num_experts": str(self.num_experts),
            "top_k": str(self.top_k),
            "null": self.null,
            "num_tokens": str(self.num_tokens),
        }
        tensors = {"null_sorted": self.null_sorted.contiguous().cpu(), "null_count": self.null_count.cpu()}
        if self.std_sorted is not None:
            tensors.update(std_sorted=self.std_sorted.contiguous().cpu(), std_count=self.std_count.cpu())
        else:
            meta["format_version"] = "1"
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a file written by :meth:`save`; a clear error for anything else."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for a bad header
            raise ValueError(f"not a bh-routing calibration file: {path} ({exc})") from None
        if meta.get("format") != "bh_routing.calibration" or set(tensors) not in (_TENSORS_V1, _TENSORS_V2):
            raise ValueError(f"not a bh-routing calibration file: {path}")
        version = meta.get("format_version", "1")
        if version not in ("1", FORMAT_VERSION):
            raise ValueError(
                f"calibration file {path} has format version {version}; this bh-routing reads 1 and "
                f"{FORMAT_VERSION}: run `bh-routing calibrate` again with this version"
            )
        return cls(
            model_name=meta["model_name"],
            model_fingerprint=meta["model_fingerprint"],
            num_layers=int(meta["num_layers"]),
            num_experts=int(meta["num_experts"]),
            top_k=int(meta["top_k"]),
            null=meta["null"],
            null_sorted=tensors["null_sorted"],
            null_count=tensors["null_count"],
            num_tokens=int(meta["num_tokens"]),
            std_sorted=tensors.get("std_sorted"),
            std_count=tensors.get("std_count"),
        )

    def summary(self) -> dict:
        """JSON-able description (no tensors)."""
        return {
            "model_name": self.model_name,
            "model_fingerprint": self.model_fingerprint,
            "num_layers": self.num_layers,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "null": self.null,
            "num_tokens": self.num_tokens,
            "reservoir_size": int(self.null_sorted.shape[-1]),
            "min_null_count": int(self.null_count.min()),
            "standardized_null_size": None if self.std_count is None else int(self.std_count.min()),
        }


class CalibrationBuilder:
    """Streaming fit of a :class:`Calibration` from router logits, in bounded memory.

    Parameters
    ----------
    num_layers, num_experts, top_k : int
        Shape of the model's MoE routing.
    null : {"unrouted", "all"}, default "unrouted"
        Which logits form expert e's null sample: those of tokens whose top-k (the model's own
        routing) does not contain e, or all of them. See the module notes for the default.
    reservoir_size : int, default 4096
        Values kept per (layer, expert). The smallest conformal p-value is 1/(n+1), so BH at
        level alpha with E experts can select beyond min_k only if n + 1 >= E / alpha.
    seed : int, default 0
        Seed of the sampling keys: the same stream and seed give the same calibration.
    pooled_size : int, default 65536
        Standardised null scores kept per layer (pooled over experts) for
        ``pvalues="standardized"``; its smallest p-value is 1/(n+1), so 65,536 lets BH select
        beyond min_k at alpha >= E / 65,537 (about 0.001 for E = 64).
    """

    def __init__(
        self,
        *,
        num_layers: int,
        num_experts: int,
        top_k: int,
        null: str = "unrouted",
        reservoir_size: int = 4096,
        seed: int = 0,
        pooled_size: int = 65536,
    ) -> None:
        check_choice(null, NULL_CHOICES, name="null")
        if reservoir_size < 1:
            raise ValueError(f"reservoir_size must be >= 1, got {reservoir_size}")
        if pooled_size < 1:
            raise ValueError(f"pooled_size must be >= 1, got {pooled_size}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
        self.num_layers, self.num_experts, self.top_k = num_layers, num_experts, top_k
        self.null, self.reservoir_size = null, reservoir_size
        self._gen = torch.Generator().manual_seed(seed)
        shape = (num_layers, num_experts, reservoir_size)
        self._keys = torch.full(shape, float("inf"))  # (L, E, R) sampling keys, inf = empty
        self._values = torch.zeros(shape)  # (L, E, R)
        self._seen = torch.zeros(num_layers, num_experts, dtype=torch.int64)  # null values seen
        self._tokens = torch.zeros(num_layers, dtype=torch.int64)
        self._std_keys = torch.full((num_layers, pooled_size), float("inf"))  # (L, Rp)
        self._std_values = torch.zeros(num_layers, pooled_size)  # (L, Rp)
        # new (key, score) pairs below the kept keys' largest wait here until Rp of them are
        # pending, then one selection keeps the Rp smallest keys (amortised O(1) per value)
        self._std_pending: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(num_layers)]

    def update(self, layer: int, logits: torch.Tensor) -> None:
        """Add the router logits (T, E) of MoE layer ``layer``."""
        check_logits(logits)
        if logits.shape[-1] != self.num_experts:
            raise ValueError(f"logits must have {self.num_experts} experts, got {logits.shape[-1]}")
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be in [0, {self.num_layers}), got {layer}")
        z = logits.detach().float().cpu()  # (T, E)
        t = z.shape[0]
        if self.null == "unrouted":
            routed = torch.zeros_like(z, dtype=torch.bool)
            routed.scatter_(1, z.topk(self.top_k, dim=-1).indices, True)  # (T, E)
            is_null = ~routed
        else:
            is_null = torch.ones_like(z, dtype=torch.bool)
        keys = torch.rand(z.shape, generator=self._gen)  # (T, E)
        keys = torch.where(is_null, keys, torch.full_like(keys, float("inf")))
        all_keys = torch.cat([self._keys[layer], keys.T], dim=1)  # (E, R + T)
        all_values = torch.cat([self._values[layer], z.T], dim=1)  # (E, R + T)
        kept = all_keys.topk(self.reservoir_size, dim=1, largest=False)  # smallest keys
        self._keys[layer] = kept.values
        self._values[layer] = all_values.gather(1, kept.indices)
        self._seen[layer] += is_null.sum(dim=0)
        self._tokens[layer] += t
        # the pooled standardised null: the same scores standardized_pvalues computes
        centre = _lower_median(z)  # (T, 1)
        scale = MAD_TO_SD * _lower_median((centre - z).abs())  # (T, 1)
        scores = -neg_zscores(z, centre, scale)  # (T, E)
        std_keys = torch.rand(z.shape, generator=self._gen)[is_null]  # (M,) null pairs only
        enters = std_keys < self._std_keys[layer].max()  # a key above every kept one cannot be kept
        pending = self._std_pending[layer]
        pending.append((std_keys[enters], scores[is_null][enters]))
        if sum(len(k) for k, _ in pending) >= self._std_keys.shape[1]:
            self._compact(layer)

    def _compact(self, layer: int) -> None:
        """Keep the pooled sample's Rp smallest keys among the kept and the pending pairs."""
        pending = self._std_pending[layer]
        if not pending:
            return
        all_keys = torch.cat([self._std_keys[layer], *(k for k, _ in pending)])  # (Rp + M,)
        all_values = torch.cat([self._std_values[layer], *(v for _, v in pending)])
        kept = all_keys.topk(self._std_keys.shape[1], largest=False)  # smallest keys
        self._std_keys[layer] = kept.values
        self._std_values[layer] = all_values[kept.indices]
        pending.clear()

    def finalize(self, *, model_name: str, model_fingerprint: str) -> Calibration:
        """The fitted calibration; raises if some layer saw no tokens."""
        if bool((self._tokens == 0).any()):
            missing = (self._tokens == 0).nonzero().flatten().tolist()
            raise ValueError(f"calibration saw no tokens for MoE layers {missing}")
        filled = torch.isfinite(self._keys)  # (L, E, R)
        values = torch.where(filled, self._values, torch.full_like(self._values, float("-inf")))
        null_sorted = values.sort(dim=-1).values  # -inf padding ends up on the left
        for layer in range(self.num_layers):
            self._compact(layer)
        std_filled = torch.isfinite(self._std_keys)  # (L, Rp)
        std_values = torch.where(std_filled, self._std_values, torch.full_like(self._std_values, float("-inf")))
        return Calibration(
            model_name=model_name,
            model_fingerprint=model_fingerprint,
            num_layers=self.num_layers,
            num_experts=self.num_experts,
            top_k=self.top_k,
            null=self.null,
            null_sorted=null_sorted,
            null_count=filled.sum(dim=-1),
            num_tokens=int(self._tokens.min()),
            std_sorted=std_values.sort(dim=-1).values,  # (L, Rp)
            std_count=std_filled.sum(dim=-1),  # (L,)
        )
