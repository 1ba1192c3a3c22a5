"""The `bh-routing` command: thin typed commands over the public API.

Every command prints one line ``error: ...`` and exits with status 2 on bad input, having
written nothing.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)

EXIT_BAD_INPUT = 2
# boolean flags take metavar="": this typer/click pair would otherwise print a misleading "<bool>" after them


@app.callback()
def _root() -> None:
    """Variable-k MoE routing with the Benjamini-Hochberg procedure, measured."""
    # our own tqdm bars report progress; transformers' weight-loading bars would only add noise
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _floats(name: str, text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"{name} must be a comma-separated list of numbers, got {text!r}")
    if not values:
        _fail(f"{name} must not be empty")
    return values


def _names(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _guard(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; a user error (BHRoutingError) ends the command with its one-line message."""
    from .core import BHRoutingError

    try:
        return fn(*args, **kwargs)
    except BHRoutingError as exc:
        _fail(_first_line(exc))


def _threads(n: Optional[int]) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _config(opts: dict):
    from .study.config import RunConfig, load_config_file

    values = load_config_file(opts.pop("config")) if opts.get("config") else {}
    opts.pop("config", None)
    values.update({k: v for k, v in opts.items() if v is not None})
    return RunConfig(**values)


def _study(group: str, opts: dict, out: Path, force: bool) -> dict:
    """Build the configuration and run the study of ``group``; any user error ends the command."""
    from .study.pipeline import STEP_GROUPS
    from .study import run

    return _guard(lambda: run(_config(opts), out, steps=STEP_GROUPS[group], force=force))


def _print_summary(results: dict, out: Path) -> None:
    from .report.evidence import primary_sentence

    st = results["derived"].get("statistics")
    typer.echo(f"wrote {out}/")
    if st:
        typer.echo(
            f"BH: {st['experts']['mean_a']:.3f} experts/token vs {results['model']['top_k']} "
            f"({st['expert_reduction_pct']['mean']:.1f}% fewer); perplexity {st['ppl_bh']['ppl']:.3f} vs {st['ppl_topk']['ppl']:.3f}"
        )
        m = results["derived"].get("matched")
        typer.echo(primary_sentence(m).replace("**", "") if m else st["documents"]["verdict"])


def _print_downstream(results: dict, out: Path) -> None:
    typer.echo(f"wrote {out}/")
    for name, t in results["steps"]["downstream"]["tasks"].items():
        cells = []
        for s, r in t["strategies"].items():
            metric = next((k for k in ("acc", "bits_per_byte") if r["metrics"].get(k) is not None), None)
            if metric and r["mean_experts_per_token"] is not None:
                cells.append(f"{s} {metric} {r['metrics'][metric]:.4g} ({r['mean_experts_per_token']:.3g} experts/token)")
        typer.echo(f"{name}: " + "; ".join(cells))
        for p in t.get("paired", []):
            typer.echo(f"  {p['verdict']}")


def _shard(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or not 0 <= int(parts[0]) < int(parts[1]):
        _fail(f"shard must be RANK/WORLD with 0 <= RANK < WORLD, e.g. 0/4, got {text!r}")
    return [int(parts[0]), int(parts[1])]


# ------------------------------------------------------------------------ shared options
_N_PROMPTS = 10  # len(bh_routing.analysis.data.DEFAULT_PROMPTS), pinned by tests/cli/test_documented_defaults.py
Model = typer.Option(None, "--model", "-m", help="hub id or local folder (default: the embedded model)")
Device = typer.Option(None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
Dtype = typer.Option(None, help="float32, bfloat16 or float16 (default: the device policy: bfloat16 on GPUs from compute "
                     "capability 8.0, float16 below, float32 on the CPU)")
Config = typer.Option(None, "--config", "-c", help="YAML or TOML file of settings, or a profile: colab-t4 "
                      "(flags override it)")
ExpertsBackend = typer.Option(None, "--experts-backend", help="auto, eager, grouped_mm or batched_mm (default auto: "
                              "grouped_mm where it runs natively, eager on GPUs below compute capability 8.0)")
Out = typer.Option(Path("runs/default"), "--out", "-o", help="output folder")
Seed = typer.Option(None, help="random seed (default 42)")
# default None: --full unless --config sets quick; shown as the default a plain command gets (RunConfig.quick is False)
Quick = typer.Option(None, "--quick/--full", metavar="", show_default="--full",
                     help="smoke run: at most 6 evaluation and 16 calibration sequences of at most "
                     "128 tokens, every other sweep value, 8 generated tokens (the README lists every change)")
Alphas = typer.Option(None, help="α sweep, comma-separated, e.g. 0.01,0.05,0.1")
Alpha = typer.Option(None, help="BH level of the single-setting analyses (default 0.05)")
Temps = typer.Option(None, "--temperatures", help="temperature sweep, comma-separated")
Strategies = typer.Option(None, help="families compared, comma-separated: topk,topp,weight_ratio,entropy,bh "
                          "(default all) and your own as module:Class or a registered name")
Pvalues = typer.Option(None, help="BH variants swept: a p-value method (empirical, calibrated, standardized), "
                       "+ -router (the router's experts), + -wide (max_k 2 x top-k)")
BhPvalues = typer.Option(None, "--bh-pvalues", help="BH variant of the single-setting analyses; auto: measured on calibration windows")
Prompts = typer.Option(None, "--prompts", help=f"prompts file, one prompt per line (default: the {_N_PROMPTS} built-in prompts)")
EvalText = typer.Option(None, "--eval-text", help="UTF-8 text file, or hf:NAME[:CONFIG]:SPLIT when online (default: embedded held-out text)")
Calib = typer.Option(None, "--calibration", help="a saved calibration.safetensors for this model")
EvalSeqs = typer.Option(None, "--eval-sequences", help="evaluation sequences (default 64)")
SeqLen = typer.Option(None, "--seq-len", help="tokens per sequence (default 256)")
Threads = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's; 1 is faster on a busy machine)")
Force = typer.Option(False, "--force", metavar="", help="replace another model's results in --out instead of refusing")


def _options(
    model: Optional[str] = Model, device: Optional[str] = Device, dtype: Optional[str] = Dtype,
    experts_backend: Optional[str] = ExpertsBackend,
    config: Optional[Path] = Config, out: Path = Out, seed: Optional[int] = Seed, quick: Optional[bool] = Quick,
    alphas: Optional[str] = Alphas, alpha: Optional[float] = Alpha, temperatures: Optional[str] = Temps,
    strategies: Optional[str] = Strategies, pvalues: Optional[str] = Pvalues, bh_pvalues: Optional[str] = BhPvalues,
    prompts: Optional[Path] = Prompts, eval_text: Optional[str] = EvalText, calibration: Optional[Path] = Calib,
    eval_sequences: Optional[int] = EvalSeqs, seq_len: Optional[int] = SeqLen, threads: Optional[int] = Threads,
    force: bool = Force,
) -> None:
    """Every option of the analysis commands (each command shows the ones its steps read)."""


def _opts(kw: dict) -> dict:
    """Command-line options -> RunConfig fields (lists parsed, paths as strings)."""
    text = {"prompts": "prompts_file"}
    opts = {text.get(k, k): v for k, v in kw.items() if k not in ("out", "threads", "force")}
    for name in ("alphas", "temperatures"):
        opts[name] = _floats(name, opts.get(name))
    for name in ("strategies", "pvalues"):
        opts[name] = _names(opts.get(name))
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()}


def _command(group: str, help_text: str, *, hide: tuple[str, ...] = ()):
    """The command of a step group; ``hide``: options its steps do not read (not offered)."""
    def command(**kw) -> None:
        _threads(kw.get("threads"))
        _print_summary(_study(group, _opts(kw), kw["out"], kw["force"]), kw["out"])

    params = inspect.signature(_options, eval_str=True).parameters.values()
    command.__signature__ = inspect.Signature([p for p in params if p.name not in hide])
    command.__doc__ = help_text
    return command


app.command("run")(_command("run", "Everything: calibration, sweeps, frontier, prompts, statistics, figures, RESULTS.md."))
app.command("sweep")(_command("sweep", "α and temperature sweeps (with the calibration they need), and their report.",
                              hide=("strategies", "prompts")))
app.command("eval")(_command("eval", "Quality: perplexity of every strategy (the Pareto frontier) and per-prompt loss.",
                             hide=("temperatures",)))
app.command("calibrate")(_command("calibrate", "Fit the calibrated null on the calibration split and save calibration.safetensors.",
                                  hide=("alphas", "alpha", "temperatures", "strategies", "pvalues", "bh_pvalues", "prompts",
                                        "calibration")))


@app.command()
def info(model: Optional[str] = Model, device: Optional[str] = Device, dtype: Optional[str] = Dtype) -> None:
    """Inspect a model's MoE architecture: layers, experts, top-k, router, backend, parameters."""
    from .models import inspect_model, load_model

    m, _ = _guard(load_model, model, device=device, dtype=dtype)
    typer.echo(str(inspect_model(m)))


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a folder written by `bh-routing run`")) -> None:
    """Redraw the figures and RESULTS.md of a finished run from its bh_routing_results.json."""
    from .study.results import export, read_results

    _guard(lambda: export(read_results(run_dir), run_dir))
    typer.echo(f"wrote {run_dir}/")


@app.command("lm-eval")
def lm_eval_command(
    model: Optional[str] = Model, device: Optional[str] = Device, dtype: Optional[str] = Dtype,
    tasks: str = typer.Option("bhr_python_mc,bhr_heldout_rolling", help="lm-eval tasks or groups, comma-separated "
                              "(hellaswag, arc_easy, mmlu … need their datasets; the default two work offline)"),
    include_path: Optional[Path] = typer.Option(None, "--include-path", help="extra folder of lm-eval task YAMLs"),
    alpha: str = typer.Option("0.05", "--alpha", help="BH level(s), comma-separated: one BH strategy each"),
    pvalues: str = typer.Option("empirical", "--pvalues", help="BH p-values: empirical, or calibrated (needs --calibration)"),
    calibration: Optional[Path] = Calib,
    limit: Optional[float] = typer.Option(None, help="at most this many documents per task (a fraction if < 1)"),
    batch_size: int = typer.Option(1, "--batch-size", help="lm-eval batch size (1 counts experts without padding)"),
    seed: int = typer.Option(42, help="random seed"),
    shard: Optional[str] = typer.Option(None, help="RANK/WORLD: evaluate every WORLD-th document from RANK "
                                        "(one process per GPU; merge with analysis.downstream.merge_downstream)"),
    backend: str = typer.Option("hf", "--backend", help="lm-eval model: hf (transformers) or vllm "
                                "(vLLM engine in this process, routed by bh_routing.vllm; needs make setup-vllm)"),
    strategy: Optional[list[str]] = typer.Option(None, "--strategy", help="one more strategy by its spec, e.g. "
                                                 "entropy:scale=1.5 or mymodule:MyRule:scale=1.5 (repeatable)"),
    out: Path = Out, force: bool = Force,
) -> None:
    """Downstream benchmarks (lm-evaluation-harness) under top-k and BH, paired tests; added to the run's report."""
    opts = {
        "model": model, "device": device, "dtype": dtype, "seed": seed, "config": None,
        "calibration": None if calibration is None else str(calibration), "downstream_tasks": _names(tasks) or [],
        "downstream_alphas": _floats("alpha", alpha), "downstream_pvalues": pvalues, "pvalues": [pvalues],
        "bh_pvalues": pvalues, "downstream_include_path": None if include_path is None else str(include_path),
        "downstream_limit": limit, "downstream_batch_size": batch_size, "downstream_shard": _shard(shard),
        "downstream_backend": backend, "downstream_strategies": list(strategy or []),
    }
    opts["alpha"] = opts["downstream_alphas"][0]
    _print_downstream(_study("lm-eval", opts, out, force), out)


@app.command("certify")
def certify_command(
    risk: str = typer.Option("top1", help="top1 (greedy-token disagreement with the unpatched model) or loss "
                             "(loss increase, nats/token, clipped to [0, 1])"),
    epsilon: float = typer.Option(0.1, help="ε in (0, 1]: certify mean risk <= ε on new sequences"),
    delta: float = typer.Option(0.1, help="δ in (0, 1): probability that the certificate is wrong"),
    strategies: Optional[str] = typer.Option(None, help="families, comma-separated: topk,topp,weight_ratio,entropy,bh "
                                             "or module:Class (default the built-in ones; δ/F each)"),
    calib_sequences: int = typer.Option(128, "--calib-sequences", help="calibration sequences certified on"),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="certify on the first TOKENS tokens of each sequence "
                                         "(default 64; 0 = the whole sequence: about 4x the time at --seq-len 256)"),
    certificate: Optional[Path] = typer.Option(None, "--certificate", help="apply this certificate.json to the evaluation "
                                               "sequences instead of certifying (refused for another model)"),
    model: Optional[str] = Model, device: Optional[str] = Device, dtype: Optional[str] = Dtype,
    config: Optional[Path] = Config, out: Path = typer.Option(Path("runs/certify"), "--out", "-o", help="output folder"),
    seed: Optional[int] = Seed, eval_text: Optional[str] = EvalText, eval_sequences: Optional[int] = EvalSeqs,
    seq_len: Optional[int] = SeqLen, threads: Optional[int] = Threads, force: bool = Force,
) -> None:
    """Certified routing: per family the fewest experts with P(mean risk <= ε) >= 1 - δ (Learn-then-Test).

    Writes OUT/certificate.json (every grid point, the chosen setting per family, versions, seed),
    certified_frontier.png and RESULTS.md; the certificate is checked on the evaluation sequences.
    """
    from .analysis.certify import FAMILIES, check_request

    _threads(threads)
    families = _names(strategies) or list(FAMILIES)
    opts = {"model": model, "device": device, "dtype": dtype, "config": None if config is None else str(config),
            "seed": seed, "eval_text": eval_text, "eval_sequences": eval_sequences, "seq_len": seq_len,
            "calib_sequences": calib_sequences, "certify_risk": risk, "certify_epsilon": epsilon,
            "certify_delta": delta, "certify_families": families, "certify_tokens": tokens,
            "certify_grid": "fine"}
    _guard(check_request, risk=risk, epsilon=epsilon, delta=delta, families=families,
           units=None if certificate is not None else calib_sequences)
    if certificate is not None:
        from .study import apply_certificate

        _print_held_out(*_guard(lambda: apply_certificate(certificate, _config(opts), out)))
        return
    _print_certificate(_study("certify", opts, out, force)["steps"]["certify"], out)


def _print_certificate(cert: dict, out: Path) -> None:
    from .analysis.certify import chosen_point

    typer.echo(f"wrote {out}/")
    if cert.get("infeasible"):
        typer.echo(f"nothing can be certified at epsilon={cert['epsilon']:g}: {cert['infeasible']} (see RESULTS.md for "
                   "what these units certify at larger epsilon)")
    for fam in cert["families"]:
        p = chosen_point(cert, fam)
        held = cert["held_out"]["families"].get(fam)
        check = "" if held is None else (f"; held-out risk {held['risk_mean']:.4f} "
                                          f"({'meets' if held['meets_epsilon'] else 'MISSES'} ε)")
        typer.echo(f"{fam}: " + ("nothing certified" if p is None else
                                 f"{p['label']}, {p['mean_k']:.3f} experts/token, bound {p['upper_bound']:.4f}{check}"))
    typer.echo(f"cheapest under the same guarantee: {cert['best_family'] or 'none'}")


def _print_held_out(cert: dict, held: dict) -> None:
    for fam, h in held["families"].items():
        typer.echo(f"{fam}: {h['label']}, held-out {cert['risk']} risk {h['risk_mean']:.4f} "
                   f"({'meets' if h['meets_epsilon'] else 'MISSES'} ε = {cert['epsilon']:g}), {h['mean_k']:.3f} experts/token")


@app.command("plan")
def plan_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model folder, hub id or config.json (default: "
                                        "the embedded model); only the configuration is read"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="t4, l4, a100 or h100"),
    gpu_memory: Optional[str] = typer.Option(None, "--gpu-memory", help="the GPU's memory, e.g. 15GiB (with --compute-capability)"),
    compute_capability: Optional[str] = typer.Option(None, "--compute-capability", help="e.g. 7.5"),
    dtype: Optional[str] = Dtype, experts_backend: Optional[str] = ExpertsBackend,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="sequences per forward pass (default: from the memory)"),
    quick: bool = typer.Option(False, "--quick/--full", metavar="", help="plan a --quick run (128-token sequences)"),
    seq_len: Optional[int] = SeqLen,
    memory_fraction: Optional[float] = typer.Option(None, "--memory-fraction", help="the share of the GPU the process may "
                                                    "use (torch.cuda.set_per_process_memory_fraction)"),
    as_json: bool = typer.Option(False, "--json", metavar="", help="print the plan as one JSON object"),
) -> None:
    """The memory plan of a run on a GPU, without one: dtype, experts backend, batch, predicted peak, fits or not."""
    import json

    from .models.memory import format_plan, gpu_spec, plan, read_config

    if memory_fraction is not None and not 0 < memory_fraction <= 1:
        _fail(f"memory fraction must be in (0, 1], got {memory_fraction!r}")
    config = _guard(read_config, model)
    name, capability, total = _guard(gpu_spec, gpu, gpu_memory, compute_capability)
    p = _guard(plan, config, name=name, capability=capability, total_bytes=total, dtype=dtype, experts_backend=experts_backend,
               batch_size=batch_size, quick=quick, seq_len=seq_len, memory_fraction=memory_fraction)
    typer.echo(json.dumps(p) if as_json else format_plan(p))


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
