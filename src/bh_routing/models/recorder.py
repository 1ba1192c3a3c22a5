"""The Recorder: what a routing strategy chose, per MoE layer, in bounded memory.

Always kept (streaming, O(layers x experts)): tokens seen, experts chosen per (layer, expert), a
histogram of k per layer, the (token, expert) pairs the experts modules computed against the
pairs a dense top-k would have computed, and (in analyze mode) how many of the strategy's pairs
the model's own top-k also chose. With ``record_tokens=True`` it also keeps, per layer and
forward call, every token's chosen experts, their count and weights, the router logits, a
validity flag and (in analyze mode) the model's own choice (CPU tensors: memory grows with the
number of tokens).

Recording is device-side accumulation, read once at the end: every count lives in one int64
tensor ``(L, C)`` on the model's device, added to in place by a few kernels per layer and call
(``index_add_`` of the chosen experts and counts, one add of a constant column vector), with
no host read and no Python state that changes from call to call, so a patched model can be
captured whole by ``torch.compile``/CUDA graphs. The reading methods copy it to the host.

Padding. When the model is called with a 2-D ``attention_mask``, tokens whose mask is 0 are left
out of the token, expert and k statistics (they are still routed and computed by the model, so
``computed_pairs`` includes them). Without a mask every position counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..core import RoutingResult
from ..core._paths import compiling


class Recorder:
    """Streaming statistics of the experts chosen per MoE layer and token.

    Parameters
    ----------
    num_layers, num_experts : int
        MoE layers L and experts per layer E.
    model_top_k : int
        The model's own k (the dense baseline of :meth:`compute_fraction`).
    record_tokens : bool, default False
        Also keep every token's choice (see the module notes).
    score : {"softmax", "sigmoid"}, default "softmax"
        How the router's logits become probabilities (:meth:`tokens` ``"probs"``).
    meta : dict, optional
        JSON-able description (family, mode, strategies, layer names) copied into :meth:`to_dict`.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        num_experts: int,
        model_top_k: int,
        record_tokens: bool = False,
        score: str = "softmax",
        meta: dict | None = None,
    ) -> None:
        if num_layers < 1 or num_experts < 1:
            raise ValueError(f"num_layers and num_experts must be >= 1, got {num_layers} and {num_experts}")
        if score not in ("softmax", "sigmoid"):
            raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
        self.num_layers, self.num_experts, self.model_top_k = num_layers, num_experts, model_top_k
        self.record_tokens, self.score = record_tokens, score
        self.meta = dict(meta or {})
        self._token_mask: torch.Tensor | None = None  # (B, S) attention mask of the current call
        e1 = num_experts + 1
        # columns of the (L, C) counts: experts chosen (column E = padding), k = 0..E, pairs
        self._k0, self._computed, self._dense, self._overlap = e1, 2 * e1, 2 * e1 + 1, 2 * e1 + 2
        self._columns = 2 * e1 + 3
        self._device: torch.device | None = None
        self.reset()

    # --- writing ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything recorded so far (the device tensors are zeroed in place)."""
        if self._device is not None:
            self._counts.zero_()
            self._logit_sums.zero_()
        self._has_model_choice = False
        self._widths = {layer: 0 for layer in range(self.num_layers)}  # written, never read per call
        self._token_records: list[list[dict]] = [[] for _ in range(self.num_layers)]

    def allocate(self, device: torch.device | str) -> None:
        """Put the counts on ``device`` (done by the patch before the first call: a compiled model
        then finds them there and allocates nothing). A no-op once allocated."""
        if self._device is not None:
            return
        device = torch.device(device)
        self._device = device
        self._counts = torch.zeros(self.num_layers, self._columns, dtype=torch.long, device=device)  # (L, C)
        # the sum of every routed logit, per layer: finite exactly when every logit was (float64:
        # no finite float32 sum overflows it); MPS has no float64
        sums_dtype = torch.float32 if device.type == "mps" else torch.float64
        self._logit_sums = torch.zeros(self.num_layers, dtype=sums_dtype, device=device)  # (L,)
        if device.type == "cuda":  # fixed addresses: CUDA graphs need no copy of them
            for t in (self._counts, self._logit_sums):
                torch._dynamo.mark_static_address(t)
        self._rows = list(self._counts.unbind(0))  # (C,) views, one per layer
        self._sum_rows = list(self._logit_sums.unbind(0))  # () views
        self._one = torch.ones(1, dtype=torch.long, device=device)
        self._vectors: dict = {}  # column values -> (C,) int64 constant on the device

    def _ones(self, n: int) -> torch.Tensor:
        """(n,) int64 ones on the recording device: a stride-0 view, no allocation, no kernel."""
        return self._one.expand(n)

    def _add_columns(self, layer: int, columns: dict, scale) -> None:
        """``counts[layer, c] += v * scale`` for every column c -> v; ``scale`` an int or a 0-d tensor.

        One kernel (a cached constant vector) outside a compiled graph; per-column adds inside
        (which the compiler fuses), so that no tensor is created and cached during a trace.
        """
        row = self._rows[layer]
        if compiling():
            for column, value in columns.items():
                row[column].add_(scale * value)
            return
        key = tuple(sorted(columns.items()))
        vector = self._vectors.get(key)
        if vector is None:
            vector = torch.zeros(self._columns, dtype=torch.long)
            for column, value in columns.items():
                vector[column] = value
            vector = self._vectors[key] = vector.to(self._device)
        if isinstance(scale, torch.Tensor):
            row.add_(vector * scale)
        else:
            row.add_(vector, alpha=scale)

    def set_token_mask(self, attention_mask: torch.Tensor | None) -> None:
        """The 2-D attention mask (B, S) of the model call in progress, or None."""
        ok = isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2
        self._token_mask = attention_mask if ok else None

    def _valid(self, num_tokens: int, device: torch.device) -> torch.Tensor | None:
        """(T,) bool: True for real tokens, from the current attention mask; None if unknown."""
        mask = self._token_mask
        if mask is None or num_tokens % mask.shape[0] != 0:
            return None
        new = num_tokens // mask.shape[0]  # tokens per sequence in this call (all, or the new ones)
        if new > mask.shape[1]:
            return None
        return mask[:, -new:].reshape(-1).to(device=device, dtype=torch.bool)  # (T,)

    def _begin(self, layer: int, indices: torch.Tensor, *, model_choice: bool):
        """Start recording a call with choice ``indices`` (T, W): the recording device and the valid mask."""
        t, w = indices.shape
        self.allocate(indices.device)
        self._widths[layer] = max(w, self._widths[layer]) if not compiling() else w
        if model_choice:
            self._has_model_choice = True
        return self._device, self._valid(t, indices.device)

    def check_finite(self, layer: int, logits: torch.Tensor) -> None:
        """Add the sum of ``logits`` (T, E) to the layer's sum: two kernels, no host read.

        :meth:`nonfinite_layers` reads it once at the end (the patch raises there)."""
        self.allocate(logits.device)
        self._sum_rows[layer].add_(_on(logits.detach().sum(dtype=self._logit_sums.dtype), self._device))

    def nonfinite_layers(self) -> list[int]:
        """MoE layers whose routed logits held a NaN or an inf (checked by :meth:`check_finite`)."""
        if self._device is None:
            return []
        return [i for i, s in enumerate(self._logit_sums.cpu().tolist()) if not math.isfinite(s)]

    def record(
        self,
        layer: int,
        result: RoutingResult,
        *,
        weights: torch.Tensor,
        logits: torch.Tensor,
        model_indices: torch.Tensor | None = None,
        pairs_per_token: int | None = None,
    ) -> None:
        """Add one forward call of MoE layer ``layer``: the strategy's choice for T tokens.

        ``model_indices`` (T, k), the model's own choice (analyze mode), feeds :meth:`model_overlap`.
        ``pairs_per_token``: the experts compute that many pairs per token (analyze mode: the
        model's k; else the experts module counts them, :meth:`add_pairs`); with it the dense
        pairs T x model k are added too.
        """
        indices, counts = result.indices, result.counts  # (T, W), (T,) int64: no autograd
        t, w = indices.shape
        e1 = self.num_experts + 1
        dev, valid = self._begin(layer, indices, model_choice=model_indices is not None)
        row = self._rows[layer]
        if valid is None:  # every token counts: index_add_ of ones
            row[self._k0 : self._k0 + e1].index_add_(0, _on(counts, dev), self._ones(t))
            row[:e1].index_add_(0, _on(indices.reshape(-1), dev), self._ones(t * w))  # (T W,)
        else:
            ones = _on(valid.long(), dev)  # (T,)
            row[self._k0 : self._k0 + e1].index_add_(0, _on(counts, dev), ones)
            row[:e1].index_add_(0, _on(indices.reshape(-1), dev), ones.repeat_interleave(w))
        if pairs_per_token is not None:
            self._add_columns(layer, {self._computed: pairs_per_token, self._dense: self.model_top_k}, t)
        if model_indices is not None:
            model_mask = torch.zeros(t, e1, dtype=torch.bool, device=indices.device)
            model_mask.scatter_(1, model_indices.to(indices.device), True)  # (T, E + 1)
            both = model_mask[:, : self.num_experts].gather(1, indices.clamp(max=self.num_experts - 1))
            both &= indices < self.num_experts  # (T, W): chosen by the strategy and by the model
            pairs = both.sum() if valid is None else (both.sum(dim=1) * valid).sum()
            row[self._overlap].add_(_on(pairs, dev))
        if self.record_tokens:
            rec = {
                "indices": indices.cpu(),  # (T, W), sentinel E in unused slots
                "counts": counts.cpu(),  # (T,)
                "weights": weights.detach().float().cpu(),  # (T, W)
                "logits": logits.detach().float().cpu(),  # (T, E)
                "valid": valid.cpu() if valid is not None else torch.ones(t, dtype=torch.bool),  # (T,)
            }
            if model_indices is not None:
                rec["model_indices"] = model_indices.detach().long().cpu()  # (T, k)
            self._token_records[layer].append(rec)

    def record_model_choice(self, layer: int, indices: torch.Tensor, *, analyze: bool) -> None:
        """Add one forward call whose choice is the model's own top-k ``indices`` (T, k), every slot real.

        What :meth:`record` adds for a ``TopK(k)`` strategy that routes exactly as the model
        (see :meth:`bh_routing.models.MoEAdapter.routes_as_model`), with the fixed k, the pairs
        (T x k computed, T x k dense) and, in analyze mode (``analyze=True``), the full overlap:
        two kernels. Not for ``record_tokens=True`` (use :meth:`record`).
        """
        t, k = indices.shape
        e1 = self.num_experts + 1
        dev, valid = self._begin(layer, indices, model_choice=analyze)
        row = self._rows[layer]
        pairs = {self._computed: k, self._dense: self.model_top_k}
        per_token = {self._k0 + k: 1, **({self._overlap: k} if analyze else {})}
        if valid is None:
            row[:e1].index_add_(0, _on(indices.reshape(-1), dev), self._ones(t * k))  # (T k,)
            self._add_columns(layer, {**per_token, **pairs}, t)
            return
        ones = _on(valid.long(), dev)  # (T,)
        row[:e1].index_add_(0, _on(indices.reshape(-1), dev), ones.repeat_interleave(k))
        self._add_columns(layer, per_token, ones.sum())
        self._add_columns(layer, pairs, t)

    def add_pairs(self, layer: int, *, computed, dense: int) -> None:
        """Count (token, expert) pairs computed by the experts module (an int or a 0-d device
        tensor), and the dense top-k pairs (an int)."""
        if self._device is None:
            self.allocate(computed.device if isinstance(computed, torch.Tensor) else "cpu")
        row = self._rows[layer]
        row[self._computed].add_(_on(computed, self._device) if isinstance(computed, torch.Tensor) else int(computed))
        row[self._dense].add_(int(dense))

    # --- reading ---------------------------------------------------------------------------------
    def _host(self) -> torch.Tensor:
        """(L, C) int64 counts on the host (one copy)."""
        if self._device is None:
            return torch.zeros(self.num_layers, self._columns, dtype=torch.long)
        return self._counts.cpu()

    @property
    def _max_width(self) -> int:
        return max(self._widths.values())

    def tokens_per_layer(self) -> torch.Tensor:
        """(L,) int64: tokens recorded per MoE layer (padding excluded)."""
        return self._host()[:, self._k0 : self._computed].sum(dim=1)

    def expert_counts(self) -> torch.Tensor:
        """(L, E) int64: how often each expert was chosen, per MoE layer."""
        return self._host()[:, : self.num_experts]

    def k_histogram(self) -> torch.Tensor:
        """(L, W + 1) int64: tokens that used k = 0..W experts, W the widest routing seen."""
        return self._host()[:, self._k0 : self._k0 + self._max_width + 1]

    def mean_k_per_layer(self) -> torch.Tensor:
        """(L,) float64: mean experts per token per MoE layer (NaN for a layer with no tokens)."""
        tokens = self.tokens_per_layer().double()
        pairs = self.expert_counts().sum(dim=1).double()
        return torch.where(tokens > 0, pairs / tokens.clamp_min(1), torch.full_like(tokens, math.nan))

    def mean_experts_per_token(self) -> float:
        """Mean experts per token over all MoE layers and tokens (NaN before any token)."""
        tokens = int(self.tokens_per_layer().sum())
        return float(self.expert_counts().sum()) / tokens if tokens else math.nan

    def selected_pairs(self) -> int:
        """(token, expert) pairs chosen over all layers (padding excluded) = sum of the counts."""
        return int(self.expert_counts().sum())

    def computed_pairs(self) -> list[int]:
        """Per layer, the (token, expert) pairs the experts modules computed (padding included)."""
        return self._host()[:, self._computed].tolist()

    def dense_pairs(self) -> list[int]:
        """Per layer, the pairs the model's own top-k computes on the same calls (T x k)."""
        return self._host()[:, self._dense].tolist()

    def compute_fraction(self) -> float:
        """Computed pairs / dense top-k pairs over all layers (1.0 = no saving; NaN before any call)."""
        host = self._host()
        dense = int(host[:, self._dense].sum())
        return int(host[:, self._computed].sum()) / dense if dense else math.nan

    def model_overlap(self) -> torch.Tensor:
        """(L,) float64: share of the strategy's (token, expert) pairs that the model's own top-k also
        chose, per MoE layer. Known in ``"analyze"`` mode only (NaN otherwise, or with no pairs)."""
        pairs = self.expert_counts().sum(dim=1).double()
        if not self._has_model_choice:
            return torch.full_like(pairs, math.nan)
        overlap = self._host()[:, self._overlap].double()
        return torch.where(pairs > 0, overlap / pairs.clamp_min(1), torch.full_like(pairs, math.nan))

    def tokens(self, layer: int) -> dict[str, torch.Tensor]:
        """Every recorded token of MoE layer ``layer`` (needs ``record_tokens=True``).

        Returns ``indices`` (N, W) with sentinel E, ``counts`` (N,), ``weights`` (N, W),
        ``logits`` (N, E), ``probs`` (N, E) and ``valid`` (N,) bool, calls concatenated in order;
        in analyze mode also ``model_indices`` (N, k), the model's own choice.
        """
        if not self.record_tokens:
            raise ValueError("per-token records need record_tokens=True")
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be in [0, {self.num_layers}), got {layer}")
        recs = self._token_records[layer]
        e = self.num_experts
        if not recs:
            return {
                "indices": torch.empty(0, 0, dtype=torch.long),
                "counts": torch.empty(0, dtype=torch.long),
                "weights": torch.empty(0, 0),
                "logits": torch.empty(0, e),
                "probs": torch.empty(0, e),
                "valid": torch.empty(0, dtype=torch.bool),
            }
        width = max(r["indices"].shape[1] for r in recs)

        def pad(x: torch.Tensor, value) -> torch.Tensor:  # (T, w) -> (T, width)
            return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

        logits = torch.cat([r["logits"] for r in recs])  # (N, E)
        probs = torch.sigmoid(logits) if self.score == "sigmoid" else torch.softmax(logits, dim=-1)
        extra = {}
        if all("model_indices" in r for r in recs):
            extra["model_indices"] = torch.cat([r["model_indices"] for r in recs])  # (N, k)
        return {
            **extra,
            "indices": torch.cat([pad(r["indices"], e) for r in recs]),
            "counts": torch.cat([r["counts"] for r in recs]),
            "weights": torch.cat([pad(r["weights"], 0.0) for r in recs]),
            "logits": logits,
            "probs": probs,
            "valid": torch.cat([r["valid"] for r in recs]),
        }

    def to_dict(self) -> dict:
        """JSON-able summary (no per-token records)."""

        def clean(xs: Sequence[float]) -> list:
            return [None if math.isnan(x) else x for x in xs]

        mean = self.mean_experts_per_token()
        frac = self.compute_fraction()
        return {
            **self.meta,
            "num_layers": self.num_layers,
            "num_experts": self.num_experts,
            "model_top_k": self.model_top_k,
            "tokens_per_layer": self.tokens_per_layer().tolist(),
            "mean_experts_per_token": None if math.isnan(mean) else mean,
            "mean_k_per_layer": clean(self.mean_k_per_layer().tolist()),
            "expert_counts": self.expert_counts().tolist(),
            "k_histogram": self.k_histogram().tolist(),
            "computed_pairs": self.computed_pairs(),
            "dense_pairs": self.dense_pairs(),
            "compute_fraction": None if math.isnan(frac) else frac,
            "model_overlap": clean(self.model_overlap().tolist()),
        }

    def __repr__(self) -> str:
        mean = self.mean_experts_per_token()
        return (
            f"Recorder(layers={self.num_layers}, experts={self.num_experts}, "
            f"tokens={int(self.tokens_per_layer().sum())}, mean_experts_per_token={mean:.3f})"
        )


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; no op when it is there already (layers may sit on other devices)."""
    return t if t.device == device else t.to(device)
