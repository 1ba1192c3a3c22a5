"""Input validation shared by the public functions of the core.

Every check raises ``ValueError`` (or ``TypeError`` for a wrong type) with one message format:
``"<name> must be <condition>, got <value>"``.
"""

from __future__ import annotations

import math

import torch


def check_alpha(alpha: float, *, name: str = "alpha") -> float:
    """A level in (0, 1] (also the rule for top-p's p and the weight ratio's beta)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1], got {type(alpha).__name__}")
    if not (0.0 < float(alpha) <= 1.0) or math.isnan(alpha):
        raise ValueError(f"{name} must be in (0, 1], got {alpha}")
    return float(alpha)


def check_temperature(temperature: float, *, name: str = "temperature") -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{name} must be a positive float, got {type(temperature).__name__}")
    if not (float(temperature) > 0.0) or math.isinf(temperature):
        raise ValueError(f"{name} must be > 0 and finite, got {temperature}")
    return float(temperature)


def check_choice(value, choices: tuple, *, name: str):
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_k_bounds(min_k: int, max_k: int | None, num_experts: int | None = None, *, least: int = 0) -> None:
    """Check ``least <= min_k <= max_k <= num_experts`` (each part only where it is known).

    ``least`` is 0 for the bare procedure (BH may reject nothing) and 1 for a run of a model
    (every token needs an expert; :class:`bh_routing.analysis.RunConfig` passes 1).
    """
    for name, value in (("min_k", min_k), ("max_k", max_k)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if min_k < least:
        raise ValueError(f"min_k must be >= {least}, got {min_k}")
    if max_k is not None:
        if max_k < 1:
            raise ValueError(f"max_k must be >= 1, got {max_k}")
        if min_k > max_k:
            raise ValueError(f"min_k must be <= max_k, got min_k={min_k} > max_k={max_k}")
    if num_experts is not None:
        if max_k is not None and max_k > num_experts:
            raise ValueError(
                f"max_k must be <= the number of experts ({num_experts}), got {max_k}"
            )
        if min_k > num_experts:
            raise ValueError(
                f"min_k must be <= the number of experts ({num_experts}), got {min_k}"
            )


def check_scores(x: torch.Tensor, name: str) -> None:
    """A floating tensor with at least one dimension, a non-empty last dimension, all finite."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (..., E), got a scalar")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if not _all_finite(x):
        raise ValueError(f"{name} must be finite, got NaN or inf")


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every element is finite: one reduction on the common path, exact always.

    A NaN or inf anywhere makes the sum NaN or inf, so a finite sum proves every element finite.
    A non-finite sum (a NaN/inf, or finite values whose sum overflows) gets the elementwise check.
    The sum is read on the host and tested there: one reduction and one host read, where
    ``torch.isfinite`` of it would add four more small ops (kernels on a GPU).
    """
    with torch.no_grad():
        return math.isfinite(x.sum().item()) or bool(torch.isfinite(x).all())


def check_logits(logits: torch.Tensor) -> None:
    check_scores(logits, "logits")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (T, E), got shape {tuple(logits.shape)}")


def check_pvalues(p: torch.Tensor) -> None:
    check_scores(p, "p_values")
    if bool(((p < 0) | (p > 1)).any()):
        bad = p[(p < 0) | (p > 1)].flatten()[0].item()
        raise ValueError(f"p_values must be in [0, 1], got {bad}")
