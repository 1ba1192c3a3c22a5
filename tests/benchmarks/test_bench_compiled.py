"""bench_compiled --add-to: a later batch size joins a saved run only with the same settings."""

import json
import shutil
from pathlib import Path

import pytest

import bench_compiled

SAVED = Path(__file__).resolve().parents[2] / "benchmarks" / "compiled-cpu.json"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batches", "64", "--repeats", "3"], "other settings: repeats 5 there, 3 here"),
        (["--batches", "64", "--repeats", "5", "--layers", "4"], "other settings: layers 2 there, 4 here"),
        (["--batches", "1", "--repeats", "5"], "batch 1 is already there"),
    ],
)
def test_add_to_refuses_a_run_it_cannot_join(tmp_path, capsys, args, message):
    saved = tmp_path / "run.json"
    shutil.copy(SAVED, saved)
    before = saved.read_bytes()
    assert bench_compiled.main(args + ["--add-to", str(saved)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --add-to {saved}: {message}" and "\n" not in err
    assert saved.read_bytes() == before  # nothing written


def test_add_to_refuses_what_is_not_a_saved_run(tmp_path, capsys):
    missing, other = tmp_path / "missing.json", tmp_path / "other.json"
    other.write_text(json.dumps({"rows": [{"no batch": 1}]}))
    assert bench_compiled.main(["--batches", "64", "--add-to", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --add-to {missing}: no such file"
    assert bench_compiled.main(["--batches", "64", "--add-to", str(other)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --add-to {other}: not a saved run of this benchmark (KeyError)"
