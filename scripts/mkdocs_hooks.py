"""MkDocs hooks of the docs site (mkdocs.yml: ``hooks:``): pages generated from the code and the shipped files.

Nothing here is typed twice: a page asks for a generated part with an HTML comment on a line of its
own, which GitHub shows as nothing and the site replaces:

- ``<!-- render: cli -->``: every ``bh-routing`` command with its options, as ``--help`` prints them
  (click's own help records of the typer app, so the page cannot drift from the command);
- ``<!-- render: outputs -->``: the files a default run writes, from the registries
  (``bh_routing.report.FIGURES`` and the file-name constants) and the shipped run in ``docs/results``;
- ``<!-- render: csv-fields -->``, ``<!-- render: certificate-fields -->``,
  ``<!-- render: results-keys -->``: the columns of comparative_results.csv, the fields of the shipped
  certificate.json, the top-level keys and steps of the shipped bh_routing_results.json;
- ``<!-- include: PATH -->``: a file of the repository (BENCHMARKS.md, ...), inserted as it is.

Files of the repository outside ``docs/`` (BENCHMARKS*.md, CONTRIBUTING.md, notebooks/README.md) become
pages of their own (``REPO_PAGES``); a relative link from any page to such a file goes to its page, a
link to an image goes to a copy of it, and a link to any other repository file becomes its path in
code (the site does not serve source files). The test suite builds the site with ``--strict``
(tests/docs/test_site.py), so a broken link or a failing render stops it.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHIPPED = DOCS / "results"  # the shipped run (a copy of runs/default without calibration.safetensors)

#: repository file -> its page in the site
REPO_PAGES = {
    "BENCHMARKS.md": "benchmarks/cpu.md",
    "BENCHMARKS-gpu.md": "benchmarks/gpu.md",
    "BENCHMARKS-vllm.md": "benchmarks/vllm.md",
    "CONTRIBUTING.md": "contributing.md",
    "notebooks/README.md": "notebook.md",
}
ASSETS = "assets/repo"  # copies of images that repository pages show

_MARKER = re.compile(r"^<!-- (render|include): ([^>]*?) -->$", re.M)
_LINK = re.compile(r"(!?\[[^\]\n]*\])\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)


# ------------------------------------------------------------------------------ generated parts
def render_cli() -> str:
    """Every command of the typer app with its help and its options as ``--help`` shows them."""
    import typer

    from bh_routing.cli import app

    group = typer.main.get_command(app)  # click's classes, or typer's vendored copy of them: duck-typed below
    ctx = group.context_class(group, info_name="bh-routing")
    out = [f"```text\n{group.get_usage(ctx)}\n```", "", (group.help or "").strip(), ""]
    out += ["| command | what it does |", "|---|---|"]
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        out.append(f"| [`{name}`](#{name}) | {_cell(cmd.get_short_help_str(limit=200))} |")
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        sub = cmd.context_class(cmd, info_name=name, parent=ctx)
        out += ["", f"## `{name}` {{#{name}}}", "", f"```text\n{cmd.get_usage(sub)}\n```", "", (cmd.help or "").strip(), ""]
        args = [p for p in cmd.params if p.param_type_name == "argument"]
        for a in args:
            out.append(f"Argument `{a.name.upper()}`: {_cell(getattr(a, 'help', None) or '')}")
        if args:
            out.append("")
        out += ["| option | meaning |", "|---|---|"]
        for p in cmd.get_params(sub):
            if p.param_type_name == "argument":
                continue
            rec = p.get_help_record(sub)
            if rec is not None:
                out.append(f"| `{rec[0]}` | {_cell(rec[1])} |")
    return "\n".join(out) + "\n"


def default_run_files() -> dict[str, str]:
    """File name -> what it is, for a default ``bh-routing run`` (no lm-eval tasks).

    The figures are those of ``bh_routing.report.FIGURES`` whose inputs the shipped run has (the
    ``downstream`` step runs only when lm-eval tasks are named).
    """
    from bh_routing.models.certificate import CERTIFICATE_JSON
    from bh_routing.report import COMPARATIVE_CSV, FIGURES, REPORT_MD
    from bh_routing.report.registry import available
    from bh_routing.study.results import CALIBRATION_FILE, RESULTS_JSON

    have = available(json.loads((SHIPPED / RESULTS_JSON).read_text(encoding="utf-8")))
    files = {
        RESULTS_JSON: "configuration, versions, seed and every number (read it with `bh_routing.study.results.read_results`)",
        COMPARATIVE_CSV: "one row per prompt: top-k against BH",
        REPORT_MD: "the report, written from the run's own numbers",
        CALIBRATION_FILE: "the fitted calibrated null with the model's fingerprint (reuse it with `--calibration`)",
        CERTIFICATE_JSON: "the Learn-then-Test certificate (read by `bh_routing.certified_strategy`)",
    }
    for name, fig in FIGURES.items():
        if all(n in have for n in fig.needs):
            files[name] = "figure (from: " + ", ".join(f"`{n}`" for n in fig.needs) + ")"
    return files


def render_outputs() -> str:
    files = default_run_files()
    rows = ["| file | what it is |", "|---|---|"] + [f"| `{k}` | {v} |" for k, v in files.items()]
    figures = sum(k.endswith(".png") for k in files)
    return (f"A default run writes these **{len(files)} files** ({figures} of them figures), and beside them the "
            "hidden `.steps/` (one JSON per finished step, from which an interrupted run resumes) and "
            "`.bh_routing.lock` (held while a run writes):\n\n" + "\n".join(rows) + "\n")


def render_csv_fields() -> str:
    from bh_routing.report.write import CSV_FIELDS

    return ", ".join(f"`{f}`" for f in CSV_FIELDS) + "\n"


def render_certificate_fields() -> str:
    cert = json.loads((SHIPPED / "certificate.json").read_text(encoding="utf-8"))
    rows = ["| field | example from the shipped run |", "|---|---|"]
    for k, v in cert.items():
        rows.append(f"| `{k}` | {_cell(_short(v))} |")
    return "\n".join(rows) + "\n"


def render_results_keys() -> str:
    res = json.loads((SHIPPED / "bh_routing_results.json").read_text(encoding="utf-8"))
    lines = ["| key | holds |", "|---|---|"]
    for k, v in res.items():
        inner = ", ".join(f"`{x}`" for x in v) if isinstance(v, dict) else _cell(_short(v))
        lines.append(f"| `{k}` | {inner} |")
    return "\n".join(lines) + "\n"


def render_shipped_bh() -> str:
    res = json.loads((SHIPPED / "bh_routing_results.json").read_text(encoding="utf-8"))
    c = res["steps"]["bh_default"]
    return (f"- reported variant **`{c['chosen']}`** at α = {res['config']['alpha']:g} "
            f"(`bh_pvalues` {res['config']['bh_pvalues']!r}, chosen: {c['how']}): {c['reason']}\n")


def config_only_fields() -> dict[str, tuple[object, str]]:
    """RunConfig fields that no option of ``bh-routing run`` sets: name -> (default, the field's comment)."""
    import dataclasses
    import inspect

    import typer

    from bh_routing.cli import app
    from bh_routing.study import RunConfig
    from bh_routing.study import config as config_module

    run = typer.main.get_command(app).commands["run"]
    flags = {p.name for p in run.params} | {"prompts_file", "quick"}
    comments = dict(re.findall(r"^    (\w+): [^=\n]+= .*?  # (.*)$", inspect.getsource(config_module), re.M))
    c = RunConfig()
    return {f.name: (getattr(c, f.name), comments.get(f.name, "")) for f in dataclasses.fields(RunConfig)
            if f.name not in flags}


def render_config_only() -> str:
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for name, (value, comment) in config_only_fields().items():
        shown = (",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "[]") if isinstance(value, list) else value
        rows.append(f"| `{name}` | `{shown}` | {_cell(comment)} |")
    return "\n".join(rows) + "\n"


def render_hardware() -> str:
    """The machine table of each benchmark file, side by side with the file it belongs to."""
    out = []
    for src, page in (("BENCHMARKS.md", "benchmarks/cpu.md"), ("BENCHMARKS-gpu.md", "benchmarks/gpu.md")):
        text = (ROOT / src).read_text(encoding="utf-8")
        m = re.search(r"^## Machine\n(.*?)(?=^## )", text, re.S | re.M)
        first = text.split("\n\n")[1].strip() if "\n\n" in text else ""
        out += [f"### [{src}]({page})", "", first, "",
                m.group(1).strip() if m else "(no machine table)", ""]
    return "\n".join(out) + "\n"


RENDERERS = {
    "cli": render_cli,
    "outputs": render_outputs,
    "csv-fields": render_csv_fields,
    "certificate-fields": render_certificate_fields,
    "results-keys": render_results_keys,
    "shipped-bh": render_shipped_bh,
    "config-only": render_config_only,
    "hardware": render_hardware,
}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _short(v, n: int = 90) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(list(v)[:8]) + (", …" if len(v) > 8 else "") + "}"
    if isinstance(v, list):
        return f"list of {len(v)}"
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= n else s[: n - 1] + "…"


# ------------------------------------------------------------------------------ markdown rewriting
def expand(markdown: str) -> str:
    """Replace every ``render``/``include`` marker of a page by what it stands for."""

    def one(m: re.Match) -> str:
        kind, arg = m.group(1), m.group(2).strip()
        if kind == "render":
            if arg not in RENDERERS:
                raise ValueError(f"unknown render marker {arg!r}; available: {', '.join(RENDERERS)}")
            return RENDERERS[arg]()
        path = ROOT / arg
        if not path.is_file():
            raise FileNotFoundError(f"include marker: no file {arg}")
        return rewrite_links(path.read_text(encoding="utf-8"), arg, _page_of(arg, "index.md"))

    return _MARKER.sub(one, markdown)


def _page_of(repo_path: str, fallback: str) -> str:
    if repo_path.startswith("docs/"):
        return repo_path[len("docs/"):]
    return REPO_PAGES.get(repo_path, fallback)


def rewrite_links(markdown: str, repo_path: str, page: str, assets: set[str] | None = None) -> str:
    """Relative links of a file at ``repo_path`` (repository-relative), shown as the site page ``page``.

    Links inside the docs folder are kept (mapped to their place relative to ``page``); links to a
    repository page go to that page; images elsewhere go to their copy under ``ASSETS`` (collected
    in ``assets``); any other repository path becomes the path in code.
    """

    def fix(m: re.Match) -> str:
        text, target = m.group(1), m.group(2)
        if re.match(r"^[a-z]+:|^#|^/", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        repo_target = posixpath.normpath(posixpath.join(posixpath.dirname(repo_path), path))
        if repo_target.startswith("docs/"):
            site = repo_target[len("docs/"):]
        elif repo_target in REPO_PAGES:
            site = REPO_PAGES[repo_target]
        elif text.startswith("!") and (ROOT / repo_target).is_file():
            site = f"{ASSETS}/{repo_target}"
            if assets is not None:
                assets.add(repo_target)
        else:
            return f"{text[1:-1]} (`{repo_target}`)" if text[1:-1].strip("`") != repo_target else f"`{repo_target}`"
        rel = posixpath.relpath(site, posixpath.dirname(page) or ".")
        return f"{text}({rel}{'#' + anchor if anchor else ''})"

    parts, last = [], 0
    for fence in _FENCE.finditer(markdown):  # never inside code blocks
        parts += [_LINK.sub(fix, markdown[last:fence.start()]), fence.group(0)]
        last = fence.end()
    parts.append(_LINK.sub(fix, markdown[last:]))
    return "".join(parts)


def repo_images() -> set[str]:
    """Images that the repository pages and included files show (copied into the site)."""
    found: set[str] = set()
    sources = list(REPO_PAGES) + [m.group(2).strip() for p in DOCS.rglob("*.md")
                                  for m in _MARKER.finditer(p.read_text(encoding="utf-8")) if m.group(1) == "include"]
    for src in sources:
        rewrite_links((ROOT / src).read_text(encoding="utf-8"), src, _page_of(src, "index.md"), found)
    return found


# ------------------------------------------------------------------------------ MkDocs events
def on_files(files, config):
    from mkdocs.structure.files import File

    for src, page in REPO_PAGES.items():
        files.append(File.generated(config, page, abs_src_path=str(ROOT / src)))
    for img in sorted(repo_images()):
        files.append(File.generated(config, f"{ASSETS}/{img}", abs_src_path=str(ROOT / img)))
    return files


def on_page_markdown(markdown, page, config, files):
    src = page.file.src_uri
    repo_path = next((k for k, v in REPO_PAGES.items() if v == src), f"docs/{src}")
    return rewrite_links(expand(markdown), repo_path, src)
