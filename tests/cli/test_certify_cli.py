"""`bh-routing certify`: one-line errors with exit status 2 (nothing written), a real certificate on a
tiny model, and a certificate refused for another model."""

import json

import pytest
from typer.testing import CliRunner

from bh_routing.cli import app

runner = CliRunner()
TINY = ["--calib-sequences", "40", "--eval-sequences", "4", "--seq-len", "32", "--tokens", "0", "--threads", "1"]


def _fail(args, message, out):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert not out.exists(), "a failed command wrote its output folder"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--epsilon", "1.5"], "epsilon must be in (0, 1], got 1.5"),
        (["--epsilon", "0"], "epsilon must be in (0, 1], got 0.0"),
        (["--delta", "1"], "delta must be in (0, 1), got 1.0"),
        (["--delta", "0"], "delta must be in (0, 1), got 0.0"),
        (["--risk", "kl"], "risk must be one of top1, loss, got 'kl'"),
        (["--strategies", "topk,nope"], "unknown strategy families ['nope']; available: topk, topp, weight_ratio, "
                                        "entropy, bh, or module:Class"),
        (["--calib-sequences", "20"], "too few calibration sequences to certify: got 20, need at least 38 for "
                                      "epsilon=0.1, delta=0.1 over 5 families (delta/5 each)"),
        (["--calib-sequences", "30", "--strategies", "topk"], "too few calibration sequences to certify: got 30, "
                                                              "need at least 22 for epsilon=0.1, delta=0.1 over 1 family (delta/1 each)"),
    ],
)
def test_bad_input(tmp_path, args, message):
    if "need at least 22" in message:  # 30 >= 22: enough for one family; ask for ε = 0.05 instead (45 needed)
        args, message = args + ["--epsilon", "0.05"], message.replace("need at least 22", "need at least 45").replace(
            "epsilon=0.1", "epsilon=0.05")
    out = tmp_path / "o"
    _fail(["certify", *args, "--out", str(out)], message, out)


@pytest.fixture(scope="module")
def tiny_certificate(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("certify") / "run"
    result = runner.invoke(app, ["certify", "--model", str(tiny_model_dir), *TINY, "--epsilon", "0.3", "--delta", "0.2",
                                 "--strategies", "topk,weight_ratio", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.stdout


def test_certify_writes_the_certificate(tiny_certificate):
    out, stdout = tiny_certificate
    assert {"certificate.json", "certified_frontier.png", "RESULTS.md", "bh_routing_results.json"} <= {
        p.name for p in out.iterdir()}
    cert = json.loads((out / "certificate.json").read_text())
    assert cert["epsilon"] == 0.3 and cert["delta"] == 0.2 and cert["risk"] == "top1"
    assert list(cert["families"]) == ["topk", "weight_ratio"] and cert["model"]["top_k"] == 4
    assert cert["n_units"] == 40 and cert["seq_len"] == 32 and cert["grid"] == "fine"
    assert len(cert["per_sequence"]["top1"]) == sum(len(e["grid"]) for e in cert["families"].values())
    assert set(cert["held_out"]["families"]) <= {"topk", "weight_ratio"}
    for fam, entry in cert["families"].items():
        line = next(x for x in stdout.splitlines() if x.startswith(f"{fam}: "))
        if entry["chosen"] is None:
            assert "nothing certified" in line
        else:
            assert entry["grid"][entry["chosen"]]["label"] in line
    assert f"cheapest under the same guarantee: {cert['best_family'] or 'none'}" in stdout
    assert "## Certified" in (out / "RESULTS.md").read_text()


def test_certificate_of_another_model_is_refused(tiny_certificate, tmp_path):
    out, _ = tiny_certificate
    other = tmp_path / "o"
    _fail(["certify", "--certificate", str(out / "certificate.json"), "--eval-sequences", "2", "--seq-len", "32",
           "--out", str(other)], "certificate was made on another model", other)


def test_certificate_applied_to_its_own_model(tiny_certificate, tiny_model_dir, tmp_path):
    out, _ = tiny_certificate
    cert = json.loads((out / "certificate.json").read_text())
    other = tmp_path / "o"
    result = runner.invoke(app, ["certify", "--certificate", str(out / "certificate.json"), "--model", str(tiny_model_dir),
                                 "--eval-sequences", "4", "--seq-len", "32", "--threads", "1", "--out", str(other)])
    assert result.exit_code == 0, result.output
    certified = [f for f, e in cert["families"].items() if e["chosen"] is not None]
    assert certified, "the tiny certificate certifies nothing: the check below would be empty"
    lines = [x for x in result.stdout.splitlines() if x.strip()]
    assert [x.split(":")[0] for x in lines] == certified
    for line in lines:
        assert "held-out top1 risk" in line and "ε = 0.3" in line and "experts/token" in line
    assert not other.exists(), "applying a certificate writes nothing"
