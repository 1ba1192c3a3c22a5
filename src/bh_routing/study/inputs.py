"""Everything a run reads, loaded and checked before anything is written: ``prepare`` -> ``Inputs``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core import Calibration
from ..analysis import data
from .config import ConfigError, RunConfig, parse_dataset_id
from .results import RESULTS_JSON, RunError, check_writable, results_model

EMBEDDED_NAME = "embedded:olmoe-tiny"
#: Settings that ``RunConfig.effective()`` shrinks in a quick run and that only the model or the text can
#: refuse: checked as requested (:func:`prepare`).
CAPPED = ("seq_len", "eval_sequences", "calib_sequences")


@dataclass
class Inputs:
    """Everything a run reads, loaded and checked before anything is written."""

    cfg: RunConfig  # effective configuration
    model: object
    tokenizer: object
    model_name: str
    routing: object  # models.ModelInfo: the model's routing shape, inspected once per run
    calibration: Calibration | None  # the user's calibration file, loaded and matched to the model
    prompts: dict[str, str]
    split: data.EvalSplit | None  # evaluation and calibration windows; None when no requested step reads the text
    settings: object = None  # analysis.settings.RoutingSettings of cfg (the configured variant), made once by Study

    @property
    def eval_seqs(self) -> torch.Tensor | None:
        """(N, S) evaluation windows."""
        return None if self.split is None else self.split.evaluation.ids

    @property
    def eval_domains(self) -> list[str]:
        return [] if self.split is None else self.split.evaluation.domains

    @property
    def eval_documents(self) -> list[str] | None:
        """Each evaluation window's document id: the unit of every interval and test."""
        return None if self.split is None else self.split.evaluation.documents

    @property
    def calib_seqs(self) -> torch.Tensor | None:
        """(M, S) calibration windows (documents disjoint from the evaluation ones)."""
        return None if self.split is None else self.split.calibration.ids


def read_text(path: str | Path, what: str) -> str:
    """A UTF-8 text file, or a ConfigError naming the file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not UTF-8 text: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _prompts(cfg: RunConfig) -> dict[str, str]:
    if not cfg.prompts_file:
        return dict(data.DEFAULT_PROMPTS)
    read_text(cfg.prompts_file, "prompts file")  # a binary or non-UTF-8 file: named
    try:
        return data.read_prompts(cfg.prompts_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def check_lengths(cfg: RunConfig, model, tokenizer, prompts: dict[str, str]) -> None:
    """Sequences and prompts against the model's positions; prompts too short to score.

    ``seq_len`` beyond ``max_position_embeddings`` is refused (the model would run past its
    positions and report a meaningless perplexity); so is a prompt longer than that, or of fewer
    than 2 tokens (no next-token loss to measure).
    """
    from ..models.adapters import text_config

    max_pos = getattr(text_config(model), "max_position_embeddings", None)
    if max_pos and cfg.seq_len > max_pos:
        raise ConfigError(f"seq_len must be <= the model's {max_pos} positions, got {cfg.seq_len}")
    for label, prompt in prompts.items():
        n = len(tokenizer(prompt, verbose=False)["input_ids"])  # as the analyses tokenize it
        if n < 2:
            raise ConfigError(f"prompt {label!r} has {n} token(s), fewer than the 2 a loss needs: {prompt[:60]!r}")
        if max_pos and n > max_pos:
            raise ConfigError(f"prompt {label!r} has {n} tokens, more than the model's {max_pos} positions")


def _texts(cfg: RunConfig) -> dict[str, str]:
    if cfg.eval_text is None:
        from ..embedded import default_eval_texts, edition_1_texts

        return edition_1_texts() if cfg.eval_edition == 1 else default_eval_texts()
    if cfg.eval_text.startswith("hf:"):
        return {"text": _dataset_text(cfg.eval_text)}
    text = read_text(cfg.eval_text, "eval_text")
    if not text.strip():
        raise ConfigError(f"eval_text is empty: {cfg.eval_text}")
    return {"text": text}


def _dataset_text(spec: str) -> str:
    """The "text" column of a Hugging Face dataset split, joined (needs `datasets` and the hub)."""
    name, config, split = parse_dataset_id(spec)
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"eval_text {spec!r} needs the `datasets` package (pip install datasets)") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # offline, unknown name, unknown split: one line for the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot load dataset {spec!r} (no network, or a wrong name/split?): {first}") from None
    if "text" not in ds.column_names:
        raise ConfigError(f"dataset {spec!r} has no 'text' column (columns: {', '.join(ds.column_names)})")
    text = "\n\n".join(t for t in ds["text"] if t and t.strip())
    if not text:
        raise ConfigError(f"dataset {spec!r} has no text")
    return text


def _split(tokenizer, texts: dict[str, str], cfg: RunConfig) -> data.EvalSplit:
    """Evaluation and calibration windows from disjoint documents (:func:`data.split_by_document`)."""
    if cfg.eval_text is None and cfg.eval_edition == 2:  # strata (origin/package) in proportion, order from the seed
        from ..embedded import default_eval_sources

        sources, seed = default_eval_sources(), cfg.seed
    else:
        sources, seed = None, None
    try:
        return data.split_by_document(
            tokenizer, texts, seq_len=cfg.seq_len, eval_sequences=cfg.eval_sequences, calib_sequences=cfg.calib_sequences,
            seed=seed, sources=sources,
        )
    except ValueError as exc:
        raise ConfigError(f"evaluation text: {exc}") from None


def model_name(cfg: RunConfig, model) -> str:
    """The name a run records: the ``model`` setting, else where the model came from."""
    name = cfg.model or getattr(model.config, "_name_or_path", "") or EMBEDDED_NAME
    if cfg.model is None and name.rstrip("/").endswith("olmoe-tiny"):
        name = EMBEDDED_NAME
    return name


def load_calibration(path: str, model, name: str, routing) -> Calibration:
    """A saved calibration, checked against the model it will route (one home for the check)."""
    from ..models import model_fingerprint

    try:
        calibration = Calibration.load(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    calibration.check_matches(
        model_fingerprint=model_fingerprint(model), num_layers=routing.num_moe_layers,
        num_experts=routing.num_experts, model_name=name,
    )
    return calibration


def check_same_model(out: Path, name: str, *, force: bool) -> None:
    """Refuse to mix another model's results into ``out`` (unless ``force``)."""
    old = None if force else results_model(out)
    if old is not None and old != name:
        raise RunError(f"{out / RESULTS_JSON} holds results of {old!r}, not {name!r}: choose another --out (or --force to replace them)")


def prepare(cfg: RunConfig, out: Path, *, settings=None, model=None, tokenizer=None, text: bool = True,
            force: bool = False, requested: RunConfig | None = None) -> Inputs:
    """Load and check the files, the output folder, the model and the calibration of a run.

    ``cfg``: the run's configuration, validated and effective (``RunConfig.validate().effective()``,
    done once by :class:`~bh_routing.study.api.Study`).
    ``settings``: the routing settings of ``cfg`` (``cfg.routing()``, made by ``Study`` with the
    configuration), kept in ``Inputs.settings`` for the steps; None where nothing routes by them.
    ``model``/``tokenizer``: an already loaded pair (e.g. in a notebook) instead of ``cfg.model``.
    ``text``: whether to read and split the evaluation text (steps such as ``downstream`` need none).
    ``force``: replace another model's results in ``out`` instead of refusing.
    ``requested``: the configuration as given, before ``effective()`` shrank it (``quick``): the
    values a quick run caps (``seq_len``, ``eval_sequences``, ``calib_sequences``) are checked as
    requested, so an invalid one is refused rather than silently cut.
    """
    from ..models import inspect_model, load_model

    check_writable(out)
    prompts = _prompts(cfg)
    texts = _texts(cfg) if text else None
    if model is None:
        model, tokenizer = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, experts_backend=cfg.experts_backend,
                                      batch_size=cfg.batch_size, seq_len=cfg.seq_len)
    elif tokenizer is None:
        raise ConfigError("a model passed in needs its tokenizer too")
    name = model_name(cfg, model)
    check_same_model(out, name, force=force)
    asked = requested if requested is not None else cfg
    check_lengths(asked, model, tokenizer, prompts)
    if text and any(getattr(asked, f) != getattr(cfg, f) for f in CAPPED):  # the requested sizes fit the text
        _split(tokenizer, texts, asked)
    check_lengths(cfg, model, tokenizer, prompts)
    routing = inspect_model(model)
    calibration = load_calibration(cfg.calibration, model, name, routing) if cfg.calibration else None
    split = _split(tokenizer, texts, cfg) if text else None
    return Inputs(cfg, model, tokenizer, name, routing, calibration, prompts, split, settings)
