"""benchmarks/report.py assembles the pages; each bench module renders its own section; fixed prose is in text/."""

import ast
import json
import re
from pathlib import Path

import pytest

import bench_e2e
import bench_generation
import bench_memory
import bench_model
import bench_moe
import bench_overhead
import bench_peakmem
import bench_routing
import report
import run

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
GPU_RUN = BENCH / "gpu-check" / "gpu.json"  # the committed GPU check
CPU_GENERATION = BENCH / "generation-cpu.json"  # the committed CPU generation run
#: each section's renderer, and the heading it writes
SECTIONS = {
    (bench_routing, "section"): "## 1. Routing cost",
    (bench_moe, "section"): "## 2. Compute actually saved: one MoE block at the OLMoE-1B-7B size",
    (bench_model, "section"): "### The whole embedded model",
    (bench_moe, "analyze_section"): "## 3. Analyze-mode overhead",
    (bench_overhead, "section"): "### Torch ops and host syncs per MoE layer",
    (bench_memory, "section"): "## 4. Recording memory",
    (bench_e2e, "section"): "## 5. End to end",
    (bench_generation, "section"): "## 6. Generation speed at the OLMoE-1B-7B size, and the batch-size effect",
    (bench_peakmem, "section"): "## 7. Peak GPU memory of `bh-routing run --quick` on the full 16-layer model",
}
PAGE = ["## Machine", "## Goals"]  # report.py's own headings, with the missed goals'


def _results(path: Path) -> dict:
    """A saved run as run.py --render reads it."""
    r = json.loads(path.read_text())
    r.setdefault("total_s", 0.0)
    r.update(run._headline(r))
    return r


def _cpu_run() -> dict:
    """The GPU check's results as a CPU run: the generation section of the CPU run, the model and the memory
    sections skipped (so every section's renderer has something to render)."""
    r = _results(GPU_RUN)
    r["device"] = "cpu"
    r["generation"] = json.loads(CPU_GENERATION.read_text())["generation"]
    r["model"] = {"skipped": "not built"}
    r["memory"] = {"skipped": "the embedded model is not built"}
    r.update(run._headline(r))
    return r


def _headings(page: str) -> list[str]:
    return [line for line in page.splitlines() if re.match(r"#{1,3} ", line)]


def test_the_gpu_page_has_every_section_of_the_run_in_order():
    page = report.render(_results(GPU_RUN))
    assert _headings(page) == [
        "# Benchmarks on a GPU", *PAGE, "## Missed goals, and why", SECTIONS[(bench_routing, "section")],
        SECTIONS[(bench_moe, "section")], SECTIONS[(bench_moe, "analyze_section")], SECTIONS[(bench_overhead, "section")],
        SECTIONS[(bench_generation, "section")], SECTIONS[(bench_peakmem, "section")],
    ]
    assert "**`pytest -m gpu`**" in page and "Failed in this run" not in page
    assert report.GPU_CHECK_START not in page and report.GENERATION_START not in page  # CPU-page blocks only


def test_the_cpu_page_has_every_section_and_the_spliced_blocks():
    page = report.render(_cpu_run())
    assert _headings(page)[:4] == ["# Benchmarks", *PAGE, "## Missed goals, and why"]
    for heading in SECTIONS.values():
        assert _headings(page).count(heading) == 1, heading
    block = page.split(report.GENERATION_START + "\n", 1)[1].split(report.GENERATION_END, 1)[0]
    assert block.startswith(SECTIONS[(bench_generation, "section")])
    assert f"{report.GPU_CHECK_START}\n{report.GPU_CHECK}{report.GPU_CHECK_END}" in page
    assert report.GPU_CHECK == (BENCH / "text" / "gpu-check.md").read_text()


def test_every_bench_renderer_is_used(monkeypatch):
    called = set()
    for (module, name) in SECTIONS:
        def spy(r, _fn=getattr(module, name), _key=(module.__name__, name)):
            called.add(_key)
            return _fn(r)

        monkeypatch.setattr(module, name, spy)
    report.render(_results(GPU_RUN))
    report.render(_cpu_run())
    assert called == {(module.__name__, name) for module, name in SECTIONS}


def test_each_section_is_written_by_its_module_not_by_report():
    own = (BENCH / "report.py").read_text()
    for (module, name), heading in SECTIONS.items():
        assert heading.lstrip("# ") in Path(module.__file__).read_text(), (module.__name__, heading)
        assert heading.lstrip("# ") not in own, heading
    tree = ast.parse(own)
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert functions == {"render", "_goal_rows", "_missed", "scaling_gpu_section"}  # the page, its goals; no section
    strings = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    numbered = [s for s in strings if re.match(r"\s*#{2,3} \d", s)]
    assert numbered == ["## 4. One GPU, measured (`benchmarks/gpu_check.sh`)\n"]  # docs/scaling.md's, assembled here
    assert len(own.splitlines()) < 250


def test_every_prose_file_is_used_and_every_one_used_exists():
    used = set()
    for path in BENCH.glob("*.py"):
        used |= set(re.findall(r"""\bprose\(["']([\w-]+)["']\)""", path.read_text()))
    files = {p.stem for p in (BENCH / "text").glob("*.md")}
    assert used == files, f"missing: {sorted(used - files)}, unused: {sorted(files - used)}"
    for name in files:
        text = (BENCH / "text" / f"{name}.md").read_text()
        assert text.strip() and text.endswith("\n") and not text.endswith("\n\n"), name


@pytest.mark.parametrize("module", [bench_routing, bench_moe, bench_model, bench_overhead, bench_memory])
def test_a_failed_section_is_one_line_naming_it(module):
    name = module.__name__.removeprefix("bench_")
    r = _cpu_run()
    r[name] = {"error": "RuntimeError: broke"}
    assert module.section(r) == f"**Failed in this run**: `RuntimeError: broke` (traceback in the run's JSON; section `{name}`).\n"


def test_the_scaling_section_comes_from_the_same_run():
    r = _results(GPU_RUN)
    text = report.scaling_gpu_section(r)
    assert text.startswith("## 4. One GPU, measured")
    assert r["machine"]["gpu"] in text and "**Generation**" in text and "**Memory**" in text
    gen = r["generation"]["rows"][0]
    assert f"{gen['decode_tok_s']:.1f} tokens/s at batch 1" in text


def test_spliced_sections_are_the_render_of_their_committed_runs():
    """The blocks of BENCHMARKS.md that single benchmarks splice in (router selection, decode compiled
    whole) are exactly what their committed JSON renders to: no number in them is typed by hand."""
    import bench_compiled

    page = (BENCH.parent / "BENCHMARKS.md").read_text()
    spliced = {
        (bench_routing.SELECTION_START, bench_routing.SELECTION_END): BENCH / "routing-selection-cpu.json",
        (bench_compiled.SECTION_START, bench_compiled.SECTION_END): BENCH / "compiled-cpu.json",
    }
    for (start, end), path in spliced.items():
        block = page.split(start, 1)[1].split(end, 1)[0].strip()
        res = json.loads(path.read_text())
        command = re.search(r"Command: `([^`]+)`", block).group(1)
        render = bench_routing.selection_section if "routing-selection" in start else bench_compiled.section
        assert render(res, command).strip() == block, path.name
