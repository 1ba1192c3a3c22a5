"""The docs site builds with MkDocs in strict mode (any warning fails: a broken link or anchor, a page
missing from the nav, a docstring mkdocstrings cannot render, a failing generated part)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import mkdocs_hooks as hooks  # noqa: E402


def test_the_config_is_strict():
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    cfg = yaml.load(text, Loader=yaml.BaseLoader)  # BaseLoader: mkdocs.yml may hold !tags
    assert cfg["strict"] == "true" and "scripts/mkdocs_hooks.py" in cfg["hooks"]


@pytest.mark.slow
def test_the_site_builds_without_a_warning(tmp_path):
    pytest.importorskip("mkdocs")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "WARNING" not in r.stderr, r.stderr[-4000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "--eval-sequences" in cli and "certify" in cli
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("BH", "patched", "Recorder", "RunConfig", "Study", "certified_strategy"):
        assert f'id="bh_routing.' in api and name in api, name


def test_every_page_is_in_the_nav():
    cfg = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")} | set(hooks.REPO_PAGES.values())
    missing = sorted(p for p in pages if f": {p}" not in cfg)
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


def test_markers_expand_and_unknown_ones_fail():
    assert "| `--seed" in hooks.expand("<!-- render: cli -->")
    with pytest.raises(ValueError, match="unknown render marker"):
        hooks.expand("<!-- render: nothing -->")
    with pytest.raises(FileNotFoundError):
        hooks.expand("<!-- include: NO_SUCH_FILE.md -->")


def test_links_to_repository_files_are_mapped():
    md = "[b](../BENCHMARKS-gpu.md#7) [s](../src/bh_routing/cli.py) [o](outputs.md) ![i](../benchmarks/x.png)\n```python\n'[x](../y.md)'\n```\n"
    out = hooks.rewrite_links(md, "docs/scaling.md", "scaling.md")
    assert "[b](benchmarks/gpu.md#7)" in out and "s (`src/bh_routing/cli.py`)" in out and "[o](outputs.md)" in out
    assert "'[x](../y.md)'" in out  # code blocks are left alone
