"""A whole run: validate everything, compute the steps (resuming finished ones), write the outputs.

Output folder (names kept from the original notebook): ``bh_routing_results.json``,
``comparative_results.csv``, ``RESULTS.md`` and the 8 figures; plus ``calibration.safetensors``
and ``.steps/`` (one JSON per finished step, so an interrupted run resumes).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core import Calibration
from . import data, derive, experiments
from .config import ConfigError, RunConfig

STEPS = ("calibration", "baseline", "alpha", "temperature", "frontier", "token_level", "comparative")
STEP_GROUPS = {  # what the single-step commands compute
    "calibrate": ("calibration",),
    "sweep": ("calibration", "alpha", "temperature"),
    "eval": ("calibration", "alpha", "frontier", "comparative"),
    "run": STEPS,
}
RESULTS_JSON = "bh_routing_results.json"
COMPARATIVE_CSV = "comparative_results.csv"
REPORT_MD = "RESULTS.md"


class RunError(RuntimeError):
    """A run that cannot start; the message is one line for the user."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check_writable(out: Path) -> None:
    """Raise RunError unless ``out`` exists as a writable folder or can be created."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RunError(f"output folder is not a folder: {probe}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunError(f"output folder is not writable: {out}")


@dataclass
class Inputs:
    """Everything a run reads, loaded and checked before anything is written."""

    cfg: RunConfig  # effective configuration
    model: object
    tokenizer: object
    model_name: str
    calibration: Calibration | None
    prompts: dict[str, str]
    eval_seqs: torch.Tensor  # (N, S)
    eval_domains: list[str]
    calib_seqs: torch.Tensor  # (M, S)


def _texts(cfg: RunConfig) -> dict[str, str]:
    if cfg.eval_text is None:
        from ..embedded import default_eval_texts

        return default_eval_texts()
    if cfg.eval_text.startswith("hf:"):
        return {"text": _dataset_text(cfg.eval_text)}
    text = Path(cfg.eval_text).read_text(encoding="utf-8")
    if not text.strip():
        raise ConfigError(f"eval_text is empty: {cfg.eval_text}")
    return {"text": text}


def _dataset_text(spec: str) -> str:
    """The "text" column of a Hugging Face dataset split, joined (needs `datasets` and the hub)."""
    from .config import parse_dataset_id

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


def _split(tokenizer, texts: dict[str, str], cfg: RunConfig) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Evaluation and calibration sequences, disjoint, both domains interleaved."""
    per_domain = {}
    need = cfg.eval_sequences + cfg.calib_sequences
    for name, text in texts.items():
        try:
            per_domain[name] = data.chunk_text(tokenizer, text, seq_len=cfg.seq_len)
        except ValueError as exc:
            raise ConfigError(f"evaluation text ({name}): {exc}") from None
    seqs, names = data.interleave_domains(per_domain)
    if len(seqs) < need:
        raise ConfigError(
            f"evaluation text too short: {len(seqs)} sequences of {cfg.seq_len} tokens, need "
            f"eval_sequences + calib_sequences = {need}"
        )
    # evaluation first (so --quick evaluates on the same leading sequences), calibration after
    return seqs[: cfg.eval_sequences], names[: cfg.eval_sequences], seqs[cfg.eval_sequences : need]


def prepare(config: RunConfig, out: Path, *, model=None, tokenizer=None) -> Inputs:
    """Validate the configuration, the files, the output folder, the model and the calibration.

    ``model``/``tokenizer``: an already loaded pair (e.g. in a notebook) instead of ``config.model``.
    """
    from ..models import load_model, model_fingerprint
    from ..models.adapters import get_adapter, text_config

    cfg = config.validate().effective()
    check_writable(out)
    prompts = data.read_prompts(cfg.prompts_file) if cfg.prompts_file else dict(data.DEFAULT_PROMPTS)
    texts = _texts(cfg)
    if model is None:
        model, tokenizer = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    elif tokenizer is None:
        raise ConfigError("a model passed in needs its tokenizer too")
    model_name = cfg.model or getattr(model.config, "_name_or_path", "") or "embedded:olmoe-tiny"
    if cfg.model is None and model_name.rstrip("/").endswith("olmoe-tiny"):
        model_name = "embedded:olmoe-tiny"
    calibration = None
    if cfg.calibration:
        calibration = Calibration.load(cfg.calibration)
        adapter, conf = get_adapter(model), text_config(model)
        calibration.check_matches(
            model_fingerprint=model_fingerprint(model),
            num_layers=len(adapter.find_layers(model)),
            num_experts=adapter.num_experts(conf),
            model_name=model_name,
        )
    eval_seqs, domains, calib_seqs = _split(tokenizer, texts, cfg)
    return Inputs(cfg, model, tokenizer, model_name, calibration, prompts, eval_seqs, domains, calib_seqs)


def _key(inputs: Inputs) -> str:
    from ..models import model_fingerprint

    from .. import __version__

    # a step is reused only for the same configuration, model and package version
    blob = json.dumps(
        {"config": inputs.cfg.to_dict(), "model": model_fingerprint(inputs.model), "version": __version__}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _compute(step: str, inputs: Inputs, cal: Calibration | None):
    cfg, model, tok = inputs.cfg, inputs.model, inputs.tokenizer
    seqs = inputs.eval_seqs
    if step == "baseline":
        return experiments.baseline_inference(model, tok, cfg, cal, data.BASELINE_PROMPTS)
    if step == "alpha":
        alphas = sorted(set(cfg.alphas) | {cfg.alpha})
        sweep_cfg = RunConfig(**{**cfg.to_dict(), "alphas": alphas})
        return experiments.alpha_sweep(model, seqs, sweep_cfg, cal)
    if step == "temperature":
        return experiments.temperature_sweep(model, seqs, cfg, cal)
    if step == "frontier":
        return experiments.baseline_frontier(model, seqs, cfg)
    if step == "token_level":
        return experiments.token_level(model, tok, cfg, cal, data.TOKEN_SENTENCE)
    if step == "comparative":
        return experiments.comparative(model, tok, cfg, cal, inputs.prompts)
    raise ValueError(f"unknown step {step!r}")


def run_steps(inputs: Inputs, out: Path, steps: tuple[str, ...]) -> dict:
    """Compute ``steps`` (reusing finished ones with the same key) and return all finished steps."""
    out.mkdir(parents=True, exist_ok=True)
    cache = out / ".steps"
    cache.mkdir(exist_ok=True)
    key = _key(inputs)
    set_seed(inputs.cfg.seed)
    cal_path = out / "calibration.safetensors"
    cal = inputs.calibration
    needs_cal = "calibrated" in inputs.cfg.pvalues or inputs.cfg.bh_pvalues == "calibrated"
    results: dict = {}
    for step in STEPS:
        path = cache / f"{step}.json"
        cached = json.loads(path.read_text()) if path.is_file() else None
        fresh = cached is not None and cached.get("key") == key
        if step == "calibration":
            if cal is None and needs_cal:
                if fresh and cal_path.is_file():
                    cal = Calibration.load(cal_path)
                else:
                    cal = experiments.fit_calibration(
                        inputs.model, inputs.calib_seqs, null=inputs.cfg.null, reservoir_size=inputs.cfg.reservoir_size,
                        seed=inputs.cfg.seed, model_name=inputs.model_name,
                    )
                    cal.save(cal_path)
            if cal is not None:
                results["calibration"] = cal.summary()
                atomic_write_text(path, json.dumps({"key": key, "data": results["calibration"]}))
            continue
        if fresh:
            results[step] = cached["data"]
        elif step in steps:
            set_seed(inputs.cfg.seed)
            results[step] = _compute(step, inputs, cal)
            atomic_write_text(path, json.dumps({"key": key, "data": results[step]}))
    return results


def environment() -> dict:
    import scipy
    import transformers

    from .. import __version__

    return {
        "bh_routing": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }


def assemble(inputs: Inputs, steps: dict) -> dict:
    """The results document: configuration, environment, model, raw steps and derived summaries."""
    from ..models import inspect_model

    cfg = inputs.cfg
    info = inspect_model(inputs.model)
    top_k = info.top_k
    max_k = cfg.max_k or top_k
    kw = {"seed": cfg.seed, "n_resamples": cfg.n_resamples}
    derived: dict = {}
    alpha_runs = steps.get("alpha", [])
    frontier = steps.get("frontier", [])
    topk_run = next((r for r in frontier if r["family"] == "topk" and r["param"] == top_k), None)
    tkw = {**kw, "top_k": top_k, "max_k": max_k, "min_k": cfg.min_k, "ref": topk_run}
    bh_run = next((r for r in alpha_runs if r["family"] == f"bh-{cfg.bh_pvalues}" and r["param"] == cfg.alpha), None)
    if alpha_runs:
        derived["alpha_sensitivity"] = derive.sweep_table(alpha_runs, **tkw)
        derived["layers"] = derive.layers(alpha_runs)
    if "temperature" in steps:
        derived["temperature_sensitivity"] = derive.sweep_table(steps["temperature"], **tkw)
    if frontier:
        derived["frontier"] = derive.sweep_table(frontier, **tkw)
        if alpha_runs:
            derived["frontier_verdicts"] = derive.frontier_verdicts(alpha_runs, frontier, **kw)
    if topk_run and bh_run:
        derived["utilization"] = derive.utilization(topk_run, bh_run)
        if "comparative" in steps:
            derived["statistics"] = derive.statistics(bh_run, topk_run, steps["comparative"], top_k=top_k, **kw)
    return {
        "config": cfg.to_dict(),
        "environment": environment(),
        "model": {**info.to_dict(), "name": inputs.model_name},
        "eval_domains": inputs.eval_domains,
        "steps": steps,
        "derived": derived,
    }


def write_outputs(results: dict, out: Path, *, figures: bool = True) -> list[Path]:
    """Write the JSON, the CSV, the figures and RESULTS.md (each file atomically)."""
    from ..report import write_report

    return write_report(results, out, figures=figures)


class Study:
    """A run driven step by step (the notebook's way) or all at once (the command's way).

    >>> study = Study(RunConfig(quick=True), "runs/demo")      # validates, loads the model
    >>> results = study.run("alpha")                            # computes (or reuses) a step
    >>> study.figure("alpha_sensitivity.png")                   # draws one figure
    >>> study.export()                                          # the 11 files
    """

    def __init__(self, config: RunConfig, out: str | Path, *, model=None, tokenizer=None) -> None:
        self.out = Path(out)
        self.inputs = prepare(config, self.out, model=model, tokenizer=tokenizer)
        self.steps: dict = {}
        self._results: dict | None = None  # assembled results, cached until a step is added

    @property
    def config(self) -> RunConfig:
        return self.inputs.cfg

    def run(self, *steps: str) -> dict:
        """Compute the named steps (all when none are named), reusing finished ones; the results dict."""
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            raise ValueError(f"unknown steps {unknown}; available: {', '.join(STEPS)}")
        self.steps.update(run_steps(self.inputs, self.out, tuple(steps) or STEPS))
        self._results = None
        return self.results

    @property
    def results(self) -> dict:
        if self._results is None:
            self._results = assemble(self.inputs, self.steps)
        return self._results

    def figure(self, name: str) -> Path:
        """Draw one of the 8 figures from the results so far; returns its path."""
        from ..report.figures import FIGURES

        if name not in FIGURES:
            raise ValueError(f"unknown figure {name!r}; available: {', '.join(FIGURES)}")
        self.out.mkdir(parents=True, exist_ok=True)
        return FIGURES[name][0](self.results, self.out / name)

    def export(self) -> list[Path]:
        """Write the JSON, CSV, figures and RESULTS.md.

        A downstream (lm-eval) step already in the folder's results for the same model is kept.
        """
        results = self.results
        previous = self.out / RESULTS_JSON
        if previous.is_file() and "downstream" not in results["steps"]:
            old = json.loads(previous.read_text(encoding="utf-8"))
            same_model = old.get("model", {}).get("name") == results["model"]["name"]
            if same_model and "downstream" in old.get("steps", {}):
                results = {**results, "steps": {**results["steps"], "downstream": old["steps"]["downstream"]}}
        return write_outputs(results, self.out)


def run(config: RunConfig, out: str | Path, *, steps: tuple[str, ...] = STEPS) -> dict:
    """Validate, compute ``steps`` (resuming finished ones), and write every output; the results dict."""
    study = Study(config, out)
    study.run(*steps)
    study.export()
    return study.results
