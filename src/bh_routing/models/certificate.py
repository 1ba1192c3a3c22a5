"""The certificate file: writing, reading and checking it, and the strategies it certifies.

Below the serving layer (the vLLM plugin reads certificates) and beside the model fingerprint
that ties a certificate to its model. How a certificate is made is
:mod:`bh_routing.analysis.certify`; its fields are described there (``format:
"bh-routing-certificate"``, ``format_version: "1"``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core import Calibration, Strategy
from ..core.errors import BHRoutingError
from ..core.families import StrategySpecError, get_family
from ..core.files import atomic_path
from .adapters import get_adapter, text_config
from .fingerprint import model_fingerprint

FORMAT = "bh-routing-certificate"
FORMAT_VERSION = "1"
CERTIFICATE_JSON = "certificate.json"


class CertificateError(BHRoutingError, ValueError):
    """A certificate request or file that cannot work; the message is one line saying why."""


def model_meta(model, model_name: str | None = None) -> dict:
    adapter, conf = get_adapter(model), text_config(model)
    name = model_name or getattr(model.config, "_name_or_path", "") or "?"
    return {"name": name, "fingerprint": model_fingerprint(model), "num_layers": len(adapter.find_layers(model)),
            "num_experts": adapter.num_experts(conf), "top_k": adapter.top_k(conf)}


def chosen_point(cert: dict, family: str | None = None) -> dict | None:
    """The chosen grid point of ``family`` (default: the best family), or None if none certified."""
    fams = cert["families"]
    if family is None:
        family = cert.get("best_family")
        if family is None:
            return None
    if family not in fams:
        raise CertificateError(f"family {family!r} is not in the certificate; available: {', '.join(fams)}")
    entry = fams[family]
    return None if entry["chosen"] is None else entry["grid"][entry["chosen"]]


def grid_points(cert: dict) -> list[dict]:
    """The certificate's grid points in test order (every family's grid, concatenated)."""
    return [p for entry in cert["families"].values() for p in entry["grid"]]


def strategy_from_description(desc: dict, *, calibration: Calibration | None = None) -> Strategy:
    """Rebuild a Strategy from its :meth:`Strategy.describe` dict (as stored in certificates)."""
    kwargs = {k: v for k, v in desc.items() if k not in ("name", "family")}
    try:
        cls = get_family(desc.get("family") or desc.get("name"))
    except StrategySpecError as exc:
        raise CertificateError(f"certificate: {exc}") from None
    if kwargs.get("pvalues") in ("calibrated", "standardized"):
        if calibration is None:
            raise CertificateError("the certified BH setting uses a calibrated null: pass its calibration")
        kwargs["calibration"] = calibration
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CertificateError(f"certificate: strategy {desc.get('name')!r}: {exc}") from None


def save_certificate(cert: dict, path: str | Path) -> Path:
    """Write ``cert`` as JSON (atomically)."""

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(cert, indent=1, allow_nan=False), encoding="utf-8")
    return path


def load_certificate(path: str | Path) -> dict:
    """Read and check a certificate.json (format and version)."""
    path = Path(path)
    if not path.is_file():
        raise CertificateError(f"certificate not found: {path}")
    try:
        cert = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CertificateError(f"cannot read certificate {path}: {exc}") from None
    if not isinstance(cert, dict) or cert.get("format") != FORMAT:
        raise CertificateError(f"not a bh-routing certificate: {path}")
    if cert.get("format_version") != FORMAT_VERSION:
        raise CertificateError(f"certificate format version {cert.get('format_version')!r} is not supported "
                               f"(this bh-routing reads {FORMAT_VERSION!r}): {path}")
    return cert


def check_fingerprint(cert: dict, model) -> None:
    """Raise CertificateError unless ``cert`` was made on ``model`` (same router weights)."""
    have = model_fingerprint(model)
    want = cert["model"]["fingerprint"]
    if have != want:
        raise CertificateError(
            f"certificate was made on another model ({cert['model'].get('name', '?')}, {want[:19]}…), "
            f"not this one ({have[:19]}…): a certificate holds only for its own model"
        )


def certified_strategy(path: str | Path, model, family: str | None = None, *,
                       calibration: Calibration | None = None) -> Strategy:
    """The certified Strategy of a certificate.json, ready for ``patched(model, strategy)``.

    Parameters
    ----------
    path : str or Path
        A certificate.json written by ``bh-routing certify`` or :func:`save_certificate`
        (fields described in :mod:`bh_routing.analysis.certify`).
    model : transformers MoE model
        Must be the model the certificate was made on (checked by fingerprint).
    family : str, optional
        A family of the certificate (``"topk"``, ``"topp"``, ``"bh"``, ``"bh-calibrated"``, a user
        family's name, ...); default the family whose certified setting uses the fewest experts
        per token.
    calibration : Calibration, optional
        Needed when the chosen setting is BH with a calibrated null.

    Raises
    ------
    CertificateError
        Another model, an unknown family, or no certified setting.
    """
    cert = load_certificate(path)
    check_fingerprint(cert, model)
    point = chosen_point(cert, family)
    if point is None:
        which = f"family {family!r}" if family else "any family"
        raise CertificateError(
            f"the certificate certifies no setting of {which} at epsilon={cert['epsilon']:g}, delta={cert['delta']:g}"
        )
    return strategy_from_description(point["strategy"], calibration=calibration)
