"""The risks of every grid point, measured per calibration sequence (the exchangeable unit).

One unpatched forward pass (greedy token and NLL at every position, kept) and one patched pass per
grid point give both risks, top-1 disagreement and loss increase (definitions in
:mod:`bh_routing.analysis.certify`), so a certificate can be recomputed for any risk, ε and δ from
the saved per-sequence risks without the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...models import patched
from .grid import LOSS_BOUND, CertificateError, GridPoint


@torch.no_grad()


def next_token_stats(model, sequences: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy next token (N, S-1) int64 and its NLL (N, S-1) float64 for every position."""
    device = next(model.parameters()).device
    tops, nlls = [], []
    for start in range(0, sequences.shape[0], batch_size):
        ids = sequences[start : start + batch_size].to(device)  # (b, S)
        logits = model(input_ids=ids).logits[:, :-1].float()  # (b, S-1, V)
        tops.append(logits.argmax(dim=-1).cpu())  # (b, S-1)
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (b, S-1)
        nlls.append(nll.double().cpu())
    return torch.cat(tops), torch.cat(nlls)


@dataclass


class RiskTable:
    """Per-sequence risks of every grid point; ``None`` rows: points not measured (``stop_above``)."""

    points: list[dict]  # per grid point: family, param, label, strategy, measured, mean_k, compute_fraction
    top1: list  # m rows of (N,) top-1 disagreement per sequence in [0, 1], or None
    loss_delta: list  # m rows of (N,) loss increase per sequence (nats/token, unclipped), or None
    seq_len: int

    def per_sequence(self, groups=None) -> dict:
        """The ``per_sequence`` block of a certificate (JSON-able)."""
        rows = lambda xs: [None if x is None else np.asarray(x).tolist() for x in xs]  # noqa: E731
        return {"top1": rows(self.top1), "loss_delta": rows(self.loss_delta),
                "groups": None if groups is None else list(groups)}


def family_slices(families: list[str]) -> dict[str, range]:
    """{family: range of its grid indices}; each family's points must be contiguous."""
    out: dict[str, range] = {}
    for fam in dict.fromkeys(families):
        idx = [i for i, f in enumerate(families) if f == fam]
        if idx != list(range(idx[0], idx[-1] + 1)):
            raise CertificateError(f"grid points of family {fam!r} must be contiguous")
        out[fam] = range(idx[0], idx[-1] + 1)
    return out


def measure_risks(model, sequences: torch.Tensor, grid: list[GridPoint], *, batch_size: int = 16,
                  stop_above: tuple[str, float] | None = None, loss_bound: float = LOSS_BOUND,
                  progress: bool = False) -> RiskTable:
    """Both risks of every grid point on every sequence (N, S): 1 unpatched + ≤ m patched passes.

    ``stop_above=(risk, c)``: within each family, stop after the first point whose mean ``risk``
    exceeds c; the family's later points stay unmeasured (``None``). Lossless for that risk at
    every ε ≤ c (the p-value of a point with mean risk ≥ ε is 1, so fixed-sequence testing stops
    there anyway) and valid for every other (ε, risk): an unmeasured point counts as not rejected,
    which only removes rejections from a valid fixed-sequence procedure.
    """
    if sequences.dim() != 2 or sequences.shape[1] < 2:
        raise CertificateError(f"sequences must have shape (N, S) with S >= 2, got {tuple(sequences.shape)}")
    ref_top, ref_nll = next_token_stats(model, sequences, batch_size)  # (N, S-1) each
    m = len(grid)
    table = RiskTable([], [None] * m, [None] * m, int(sequences.shape[1]))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=m, desc="certify grid", leave=False)
    stopped: set[str] = set()
    for i, gp in enumerate(grid):
        point = {"family": gp.family, "param": float(gp.param), "label": gp.label, "strategy": gp.strategy.describe(),
                 "measured": gp.family not in stopped, "mean_k": None, "compute_fraction": None}
        table.points.append(point)
        if bar is not None:
            bar.update()
        if not point["measured"]:
            continue
        with patched(model, gp.strategy, mode="patch") as rec:
            tops, nll = next_token_stats(model, sequences, batch_size)
            point["mean_k"], point["compute_fraction"] = float(rec.mean_experts_per_token()), float(rec.compute_fraction())
        table.top1[i] = (tops != ref_top).double().mean(dim=1).numpy()  # (N,)
        table.loss_delta[i] = (nll - ref_nll).mean(dim=1).numpy()  # (N,)
        if stop_above is not None:
            risk, c = stop_above
            value = risk_matrix(table.top1[i], table.loss_delta[i], risk, loss_bound)  # (N,) in [0, 1]
            if float(np.mean(value)) * (1.0 if risk == "top1" else loss_bound) > c:
                stopped.add(gp.family)
    if bar is not None:
        bar.close()
    family_slices([p["family"] for p in table.points])
    return table


# ------------------------------------------------------------------------------------ certifying


def risk_matrix(top1: np.ndarray, loss_delta: np.ndarray, risk: str, loss_bound: float) -> np.ndarray:
    """(m, N) risks in [0, 1]: top-1 disagreement, or the loss increase clipped to [0, B] over B."""
    if risk == "top1":
        return np.clip(top1, 0.0, 1.0)
    return np.clip(loss_delta, 0.0, loss_bound) / loss_bound


def by_group(x: np.ndarray, groups) -> np.ndarray:
    """(m, N) per-sequence risks -> (m, G) per-group means (groups in order of first appearance)."""
    if groups is None:
        return x
    g = np.asarray(groups)
    if g.shape != (x.shape[1],):
        raise CertificateError(f"groups must give one id per sequence ({x.shape[1]}), got {g.shape}")
    _, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    order = np.argsort(first)  # groups in order of first appearance
    sums = np.zeros((x.shape[0], first.size))
    np.add.at(sums.T, inverse, x.T)
    counts = np.bincount(inverse, minlength=first.size)
    return (sums / counts)[:, order]
