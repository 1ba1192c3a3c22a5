"""Every code example of README.md and docs/ runs as written (tests/docs/md_examples.py says how and
how a block is marked); examples that need a GPU, the hub, vLLM or a long run are checked instead.

Pages whose examples read ``runs/quick`` get a copy of one shared ``bh-routing run --quick --out
runs/quick`` in their folder (made once per session, and once across pytest-xdist workers), so the
commands there resume it instead of recomputing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from md_examples import ROOT, blocks, check_command, commands, documents, run_document, with_quick

def _folder(path: Path, tmp_path: Path, request) -> Path:
    (tmp_path / "docs").symlink_to(ROOT / "docs")  # pages may read the shipped run, docs/results/
    if "runs/quick" in path.read_text(encoding="utf-8"):
        shutil.copytree(request.getfixturevalue("quick_run"), tmp_path / "runs" / "quick")
    return tmp_path


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_of(path, tmp_path, request):
    run_document(path, _folder(path, tmp_path, request))


def test_the_pages_have_examples_to_run():
    """The runner finds blocks, and most of the docs' shell and Python blocks run (not only checked)."""
    found = [b for p in documents() for b in blocks(p) if b.language in ("python", "bash", "sh", "shell", "console")]
    run = [b for b in found if not b.checked_only]
    assert len(found) >= 20 and len(run) >= len(found) // 3, (len(found), len(run))
    assert any("bh-routing run" in b.source for b in run)


# ------------------------------------------------------------------------------ the runner itself
def _page(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "page.md"
    p.write_text(text, encoding="utf-8")
    return p


def test_a_failing_python_block_fails(tmp_path):
    page = _page(tmp_path, "x\n\n```python\nx = 1\n```\n\n```python\nassert x == 2, 'x is 1'\n```\n")
    with pytest.raises(AssertionError, match="x is 1"):
        run_document(page, tmp_path)


def test_a_failing_shell_block_fails(tmp_path):
    page = _page(tmp_path, "```bash\ntrue\nfalse\necho never\n```\n")
    with pytest.raises(AssertionError, match="exit status 1"):
        run_document(page, tmp_path)


def test_a_marked_block_is_checked_not_run(tmp_path):
    ok = _page(tmp_path, "<!-- example: gpu hub -->\n```bash\nbh-routing run --model allenai/OLMoE-1B-7B-0924 --device cuda\n```\n")
    run_document(ok, tmp_path)  # not run: no GPU, no hub here
    bad = _page(tmp_path, "<!-- example: gpu -->\n```bash\nbh-routing run --no-such-option 3\n```\n")
    with pytest.raises(AssertionError, match="no-such-option"):
        run_document(bad, tmp_path)
    syntax = _page(tmp_path, "<!-- example: gpu -->\n```python\nimport torch\nif True\n```\n")
    with pytest.raises(SyntaxError):
        run_document(syntax, tmp_path)
    command = _page(tmp_path, "<!-- example: long -->\n```bash\nbh-routing runn --quick\n```\n")
    with pytest.raises(AssertionError, match="no command 'runn'"):
        run_document(command, tmp_path)


def test_an_unmarked_gpu_or_hub_block_fails_at_once(tmp_path):
    page = _page(tmp_path, "```bash\nbh-routing lm-eval --model allenai/OLMoE-1B-7B-0924 --device cuda\n```\n")
    with pytest.raises(AssertionError, match="names 'allenai/' and would run here; mark it"):
        run_document(page, tmp_path)


def test_an_unknown_marker_fails(tmp_path):
    page = _page(tmp_path, "<!-- example: gpuu -->\n```python\nraise SystemExit\n```\n")
    with pytest.raises(ValueError, match="unknown example marker 'gpuu'"):
        run_document(page, tmp_path)


def test_file_marker_and_quick(tmp_path):
    page = _page(tmp_path, "<!-- example: file=pkg_example_mod.py -->\n```python\nVALUE = 3\n```\n\n"
                           "```python\nimport pkg_example_mod\nassert pkg_example_mod.VALUE == 3\n```\n")
    run_document(page, tmp_path)
    assert (tmp_path / "pkg_example_mod.py").is_file()
    assert with_quick("bh-routing run --out x\nbh-routing run --quick\n") == "bh-routing run --quick --out x\nbh-routing run --quick\n"
    assert commands("FOO=1 bh-routing certify --epsilon 0.2 | tee x  # comment\n", "bash") == [["certify", "--epsilon", "0.2"]]


def test_every_command_in_the_docs_exists():
    """Each ``bh-routing ...`` line of every page parses with the command's options, run or not."""
    n = 0
    for p in documents():
        for b in blocks(p):
            if b.language in ("bash", "sh", "shell", "console"):
                for args in commands(b.source, b.language):
                    check_command(args)
                    n += 1
    assert n >= 10
