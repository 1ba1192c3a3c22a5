"""The command line: exit codes, one-line messages, nothing written on bad input."""

import json

import torch
from typer.testing import CliRunner

from bh_routing.cli import app

runner = CliRunner()
SMALL = ["--alphas", "0.05,0.3", "--temperatures", "1.0,2.0", "--eval-sequences", "3", "--seq-len", "32"]


def _fail(args, message, out=None):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    if out is not None:
        assert not out.exists(), "a failed command wrote its output folder"
    return lines[0]


def test_unknown_model(tmp_path):
    out = tmp_path / "o"
    _fail(["run", "--model", str(tmp_path / "no-such-model"), "--out", str(out)], "no-such-model", out)


def test_bad_alpha_lists(tmp_path, tiny_model_dir):
    out = tmp_path / "o"
    _fail(["run", "--model", str(tiny_model_dir), "--alphas", "0.05,abc", "--out", str(out)],
          "alphas must be a comma-separated list of numbers, got '0.05,abc'", out)
    _fail(["run", "--model", str(tiny_model_dir), "--alphas", "0.05,1.5", "--out", str(out)],
          "alphas values must be in (0, 1], got 1.5", out)
    _fail(["sweep", "--model", str(tiny_model_dir), "--alphas", ",", "--out", str(out)], "alphas must not be empty", out)


def test_unwritable_output_folder(tmp_path, tiny_model_dir):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _fail(["run", "--model", str(tiny_model_dir), "--out", str(a_file / "sub")], "output folder is not a folder")


def test_prompts_file_empty_or_missing(tmp_path, tiny_model_dir):
    out = tmp_path / "o"
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    _fail(["run", "--model", str(tiny_model_dir), "--prompts", str(empty), "--out", str(out)], "prompts file is empty", out)
    _fail(["run", "--model", str(tiny_model_dir), "--prompts", str(tmp_path / "nope.txt"), "--out", str(out)],
          "prompts_file not found", out)


def test_calibration_for_another_model(tmp_path, tiny_model_dir):
    from bh_routing.core import CalibrationBuilder

    b = CalibrationBuilder(num_layers=2, num_experts=16, top_k=4, reservoir_size=8)
    for layer in range(2):
        b.update(layer, torch.randn(10, 16))
    cal = b.finalize(model_name="another-model", model_fingerprint="0" * 64).save(tmp_path / "cal.safetensors")
    out = tmp_path / "o"
    _fail(["run", "--model", str(tiny_model_dir), "--calibration", str(cal), "--out", str(out)],
          "calibration was made for another-model", out)


def test_config_file_errors(tmp_path, tiny_model_dir):
    bad = tmp_path / "c.yaml"
    bad.write_text("alphass: [0.1]\n")
    _fail(["run", "--config", str(bad), "--out", str(tmp_path / "o")], "unknown config keys: alphass (did you mean alphas?)")
    _fail(["run", "--config", str(tmp_path / "none.toml")], "config file not found")


def test_an_older_results_file_still_loads(tmp_path):
    """A results file's config from before a setting was removed repeats the run (the setting is dropped)."""
    from bh_routing.study.config import RunConfig, load_config_file

    old = tmp_path / "bh_routing_results.json"
    old.write_text(json.dumps({"config": {"seed": 7, "n_resamples": 2000}}))
    assert load_config_file(old) == {"seed": 7}
    assert RunConfig(**load_config_file(old)).seed == 7


def test_config_file_and_flags(tmp_path, tiny_model_dir):
    conf = tmp_path / "c.toml"
    conf.write_text(f'model = "{tiny_model_dir}"\nalphas = [0.05, 0.3]\nseq_len = 32\neval_sequences = 3\n'
                    'calib_sequences = 6\nreservoir_size = 128\ntemperatures = [1.0]\n'
                    'topp_values = [0.5]\nratio_values = [0.5]\n')
    out = tmp_path / "o"
    result = runner.invoke(app, ["sweep", "--config", str(conf), "--alpha", "0.3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "alpha_sensitivity.png").is_file() and (out / "bh_routing_results.json").is_file()
    res = json.loads((out / "bh_routing_results.json").read_text())
    assert res["config"]["alpha"] == 0.3 and res["config"]["seq_len"] == 32
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0
    # a finished run's results file is a config too: the same numbers again
    again = tmp_path / "again"
    result = runner.invoke(app, ["sweep", "--config", str(out / "bh_routing_results.json"), "--out", str(again)])
    assert result.exit_code == 0, result.output
    res2 = json.loads((again / "bh_routing_results.json").read_text())
    assert res2["derived"]["alpha_sensitivity"] == res["derived"]["alpha_sensitivity"]
    _fail(["report", str(tmp_path / "nothing")], "no bh_routing_results.json in")


def test_info(tiny_model_dir):
    result = runner.invoke(app, ["info", "--model", str(tiny_model_dir)])
    assert result.exit_code == 0 and "16" in result.output and "OlmoeTopKRouter" in result.output


def test_dataset_eval_text_offline(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "o"
    _fail(["calibrate", "--model", str(tiny_model_dir), "--eval-text", "hf:wikitext", "--out", str(out)],
          "eval_text dataset must look like hf:NAME[:CONFIG]:SPLIT, got 'hf:wikitext'", out)
    _fail(["calibrate", "--model", str(tiny_model_dir), "--eval-text", "hf:no-such-dataset-bhr:test", "--out", str(out)],
          "cannot load dataset 'hf:no-such-dataset-bhr:test'", out)


def test_each_command_offers_only_the_options_its_steps_read():
    def options(command):
        return set(__import__("re").findall(r"--[a-z-]+", runner.invoke(app, [command, "--help"], terminal_width=200).output))

    assert "--alphas" in options("run") and "--prompts" in options("run")
    assert not {"--alphas", "--temperatures", "--prompts", "--strategies", "--calibration"} & options("calibrate")
    assert "--temperatures" not in options("eval") and "--prompts" not in options("sweep")


def test_boolean_flags_show_no_bool_metavar():
    text = runner.invoke(app, ["run", "--help"], terminal_width=200).output
    flags = [line for line in text.splitlines() if "--quick" in line or "--force" in line]
    assert len(flags) == 2 and not any("<bool>" in line for line in flags)
