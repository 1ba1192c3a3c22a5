"""Every bad input refused up front: one line ``error: …``, exit status 2, the output folder unchanged.

One row per case (issue #18's list and the earlier good ones). ``{model}``, ``{out}`` and ``{tmp}``
in the arguments are filled in; ``setup`` writes the files a case needs (inputs, or an output
folder that must stay as it is).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from bh_routing.cli import app

runner = CliRunner()
SIZES = ["--eval-sequences", "2", "--seq-len", "16"]
SMALL = ["--alphas", "0.05,0.3", "--temperatures", "1.0", *SIZES]


def _write(name, content):
    def setup(tmp, model):
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def _other_calibration(tmp, model):
    from bh_routing.core import CalibrationBuilder

    b = CalibrationBuilder(num_layers=2, num_experts=16, top_k=4, reservoir_size=8)
    for layer in range(2):
        b.update(layer, torch.randn(10, 16))
    b.finalize(model_name="another-model", model_fingerprint="0" * 64).save(tmp / "cal.safetensors")


def _model_copy(name, change):
    def setup(tmp, model):
        shutil.copytree(model, tmp / name)
        change(tmp / name)
    return setup


def _truncate_weights(folder):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_tokenizer(folder):
    for p in folder.iterdir():
        if "token" in p.name or p.name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
            p.unlink()


def _results_of(name):
    return _write("out/bh_routing_results.json", json.dumps(
        {"config": {}, "model": {"name": name}, "eval_domains": [], "steps": {}, "derived": {}}))


RUN = ["run", "-m", "{model}", "-o", "{out}", *SMALL]
CASES = [
    # (id, arguments, the message (part of the one line), setup)
    ("missing model", ["run", "-m", "{tmp}/no-such-model", "-o", "{out}"], "model folder not found", None),
    ("alphas not numbers", [*RUN, "--alphas", "0.05,abc"], "alphas must be a comma-separated list of numbers, got '0.05,abc'", None),
    ("alpha above 1", [*RUN, "--alphas", "0.05,1.5"], "alphas values must be in (0, 1], got 1.5", None),
    ("empty alphas", ["sweep", "-m", "{model}", "-o", "{out}", "--alphas", ","], "alphas must not be empty", None),
    ("infinite temperature", [*RUN, "--temperatures", "inf"], "temperatures values must be > 0 and finite, got inf", None),
    ("negative seed", [*RUN, "--seed", "-1"], "seed must be an int in [0, 2**32), got -1", None),
    ("unknown device", [*RUN, "--device", "tpu7"], "device must be cpu, cuda, cuda:N or mps, got 'tpu7'", None),
    ("unavailable device", [*RUN, "--device", "cuda:63"], "device 'cuda:63' asked for", None),
    ("seq_len beyond the model", [*RUN, "--seq-len", "512"], "seq_len must be <= the model's 256 positions, got 512", None),
    # values a --quick run caps are checked as requested (issue #26), from flags and from a config file
    ("--quick: seq_len beyond the model", [*RUN, "--quick", "--seq-len", "4096"],
     "seq_len must be <= the model's 256 positions, got 4096", None),
    ("config: --quick with seq_len beyond the model", ["run", "-c", "{tmp}/c.yaml", "-m", "{model}", "-o", "{out}"],
     "seq_len must be <= the model's 256 positions, got 4096", _write("c.yaml", "quick: true\nseq_len: 4096\n")),
    ("--quick: more evaluation windows than the text holds", [*RUN, "--quick", "--eval-sequences", "100000"],
     "evaluation text: text too short: evaluation needs 100000 windows of 16 tokens", None),
    ("one-token prompt", [*RUN, "--prompts", "{tmp}/p.txt"], "fewer than the 2 a loss needs", _write("p.txt", "x\n")),
    ("prompt longer than the model", [*RUN, "--prompts", "{tmp}/p.txt"], "more than the model's 256 positions",
     _write("p.txt", "word " * 600 + "\n")),
    ("empty prompts file", [*RUN, "--prompts", "{tmp}/p.txt"], "prompts file is empty", _write("p.txt", "\n  \n")),
    ("missing prompts file", [*RUN, "--prompts", "{tmp}/nope.txt"], "prompts_file not found", None),
    ("binary prompts file", [*RUN, "--prompts", "{tmp}/p.bin"], "prompts file is not UTF-8 text", _write("p.bin", b"\xff\xfe\x00\x81")),
    ("non-UTF-8 eval text", [*RUN, "--eval-text", "{tmp}/t.txt"], "eval_text is not UTF-8 text", _write("t.txt", b"caf\xe9 " * 100)),
    ("empty eval text", [*RUN, "--eval-text", "{tmp}/t.txt"], "eval_text is empty", _write("t.txt", "  \n")),
    ("config: seed not a number", ["run", "-c", "{tmp}/c.yaml", "-o", "{out}"], "seed must be an int", _write("c.yaml", 'seed: "abc"\n')),
    ("config: scalar alphas", ["run", "-c", "{tmp}/c.yaml", "-o", "{out}"], "alphas must be a list, got 0.05", _write("c.yaml", "alphas: 0.05\n")),
    ("config: unknown key", ["run", "-c", "{tmp}/c.yaml", "-o", "{out}"], "unknown config keys: alphass (did you mean alphas?)",
     _write("c.yaml", "alphass: [0.1]\n")),
    ("config: removed key", ["run", "-c", "{tmp}/c.yaml", "-o", "{out}"], "config keys no longer used: n_resamples (every interval",
     _write("c.yaml", "n_resamples: 300\n")),
    ("config: not UTF-8", ["run", "-c", "{tmp}/c.yaml", "-o", "{out}"], "cannot read config file", _write("c.yaml", b"seed: \xff\n")),
    ("config: missing", ["run", "-c", "{tmp}/none.toml", "-o", "{out}"], "config file not found", None),
    ("calibration of another model", [*RUN, "--calibration", "{tmp}/cal.safetensors"], "calibration was made for another-model",
     _other_calibration),
    ("calibration file damaged", [*RUN, "--calibration", "{tmp}/cal.safetensors"], "not a bh-routing calibration file",
     _write("cal.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")),
    ("truncated weights (run)", ["run", "-m", "{tmp}/trunc", "-o", "{out}"], "cannot load the weights of",
     _model_copy("trunc", _truncate_weights)),
    ("truncated weights (info)", ["info", "-m", "{tmp}/trunc"], "cannot load the weights of", _model_copy("trunc", _truncate_weights)),
    ("no tokenizer", ["run", "-m", "{tmp}/notok", "-o", "{out}"], "no tokenizer in", _model_copy("notok", _drop_tokenizer)),
    ("output folder is a file", ["run", "-m", "{model}", "-o", "{tmp}/file.txt/sub"], "output folder is not a folder",
     _write("file.txt", "x")),
    ("another model's results in --out", RUN, "holds results of 'another-model'", _results_of("another-model")),
    ("report: no results", ["report", "{out}"], "no bh_routing_results.json in", None),
    ("report: results file {}", ["report", "{out}"], "is not a bh-routing results file", _write("out/bh_routing_results.json", "{}")),
    ("report: truncated results", ["report", "{out}"], "cannot read", _write("out/bh_routing_results.json", '{"config": {')),
    ("report: incomplete results", ["report", "{out}"], "is incomplete: environment lacks torch",
     _write("out/bh_routing_results.json", '{"config": {"seed": 1}, "model": {}, "steps": {}, "derived": {}}')),
]


def _snapshot(folder):
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("args, message, setup", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_one_line_with_nothing_written(tmp_path, tiny_model_dir, args, message, setup):
    out = tmp_path / "out"
    if setup is not None:
        setup(tmp_path, tiny_model_dir)
    before = _snapshot(out)
    argv = [a.format(model=tiny_model_dir, out=out, tmp=tmp_path) for a in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert _snapshot(out) == before, "a refused command changed its output folder"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write into a read-only folder")
def test_report_into_a_read_only_folder(tmp_path):
    (tmp_path / "bh_routing_results.json").write_text(json.dumps({"config": {}, "model": {}, "steps": {}, "derived": {}}))
    tmp_path.chmod(0o555)
    try:
        result = runner.invoke(app, ["report", str(tmp_path)])
    finally:
        tmp_path.chmod(0o755)
    assert result.exit_code == 2 and result.stderr.startswith("error: output folder is not writable")


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(out / '.bh_routing.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(out)
        result = runner.invoke(app, ["calibrate", "-m", str(tiny_model_dir), "-o", str(out), *SIZES])
        assert result.exit_code == 2 and "another bh-routing run is writing to" in result.stderr
        assert _snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()


def test_force_replaces_another_models_results(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    _results_of("another-model")(tmp_path, tiny_model_dir)
    result = runner.invoke(app, ["calibrate", "-m", str(tiny_model_dir), "-o", str(out), *SIZES, "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "bh_routing_results.json").read_text())["model"]["name"] == str(tiny_model_dir)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert (out / "bh_routing_results.json").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert (out / "calibration.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
