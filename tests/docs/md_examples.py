"""Run the code examples of Markdown files (README.md, docs/, ...) as a user would, with Sybil.

Every fenced block is found by Sybil's Markdown lexer; what happens to it depends on its language
and on an optional marker, an HTML comment on the line just above the fence (GitHub and the docs
site show it as nothing):

    <!-- example: WORD [WORD ...] -->

- ``python``: executed, in one namespace per file, in order; the working directory is the file's
  scratch folder (see ``run_document``).
- ``bash``/``sh``/``shell``/``console``: each block runs with ``bash -euo pipefail`` in that folder,
  ``bh-routing`` being this checkout's command (``python -m bh_routing.cli``). ``console`` blocks
  run their ``$ `` lines only.
- ``toml``/``yaml``/``json``: parsed. Any other language (``text``, ``markdown``, none) is output or
  prose and is left alone.

Marker words:

- ``gpu``, ``hub``, ``vllm``, ``long``, ``colab``, ``fragment``: not run, only checked: Python is
  compiled; a shell block is parsed by ``bash -n`` and each ``bh-routing`` command in it is parsed
  against the command's own options (an option that does not exist fails the check). Say in the
  text why (a GPU, the Hugging Face Hub, vLLM, a long run, Colab, a fragment of a larger file).
- ``quick``: run, with ``--quick`` added to every ``bh-routing run`` command that lacks it. Use it
  only where the page says that the suite runs the command with ``--quick``.
- ``file=PATH``: the block is also saved as PATH in the scratch folder (e.g. a module the next
  block imports).
- ``covered-by=TEST``: not run here because the named test file (path from the repository root)
  runs it as written; checked like ``long``, and the test file must exist and name this file.

A marker word that is not one of these fails the file, so a typo cannot silently skip a block.
An unmarked block that names a GPU (``--device cuda``), the hub (``allenai/``) or a server (``vllm serve``)
fails at once with that advice, instead of after a download or a CUDA error.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

from sybil import Document
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

ROOT = Path(__file__).resolve().parents[2]
SHELLS = ("bash", "sh", "shell", "console")
CHECK_ONLY = {"gpu", "hub", "vllm", "long", "colab", "fragment"}
WORDS = CHECK_ONLY | {"quick"}
_NEEDS = re.compile(r"--device[ =]cuda|device=\"cuda\"|\ballenai/|\bvllm serve\b|CUDA_VISIBLE_DEVICES")  # a GPU, the hub, a server
_MARK = re.compile(r"<!-- example: ([^>]*?) -->[ \t]*\n[ \t]*$")


def documents() -> list[Path]:
    """The Markdown files whose examples the suite runs: whatever README.md and docs/ hold now."""
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "notebooks" / "README.md"]
    files += sorted(ROOT.glob("BENCHMARKS*.md")) + sorted((ROOT / "docs").rglob("*.md"))
    # docs/results/ is a run's own report (RESULTS.md), written by bh_routing.report, not by hand: its
    # one block is the run's reproduce command with a placeholder folder
    return [f for f in files if f.is_file() and (ROOT / "docs" / "results") not in f.parents]


class Block:
    """One fenced block: language, source, marker words, line number."""

    def __init__(self, language: str, source: str, marks: dict[str, str | None], line: int, path: Path):
        self.language, self.source, self.marks, self.line, self.path = language, source, marks, line, path

    @property
    def where(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}"

    @property
    def checked_only(self) -> bool:
        return bool(CHECK_ONLY & set(self.marks)) or "covered-by" in self.marks


def _marks(text: str, start: int, path: Path, line: int) -> dict[str, str | None]:
    m = _MARK.search(text[max(0, start - 300):start])
    if not m:
        return {}
    marks: dict[str, str | None] = {}
    for word in m.group(1).split():
        key, _, value = word.partition("=")
        if key in ("file", "covered-by"):
            if not value:
                raise ValueError(f"{path.name}:{line}: example marker {key}= needs a value")
            marks[key] = value
        elif key in WORDS and not value:
            marks[key] = None
        else:
            raise ValueError(f"{path.name}:{line}: unknown example marker {word!r}; "
                             f"known: {', '.join(sorted(WORDS | {'file=PATH', 'covered-by=TEST'}))}")
    return marks


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order (Sybil's lexer: nested and indented fences too)."""
    doc = Document(path.read_text(encoding="utf-8"), str(path))
    lexer = FencedCodeBlockLexer(language=r"[^\n]*", mapping={"language": "language", "source": "source"})
    out = []
    for region in lexer(doc):
        line = doc.text.count("\n", 0, region.start) + 1
        lang = (region.lexemes["language"] or "").strip().split()
        out.append(Block(lang[0].lower() if lang else "", str(region.lexemes["source"]),
                         _marks(doc.text, region.start, path, line), line, path))
    return out


# ------------------------------------------------------------------------------ checks
def commands(source: str, language: str) -> list[list[str]]:
    """The ``bh-routing`` command lines of a shell block, as argument lists (continuations joined)."""
    lines = source.replace("\\\n", " ").splitlines()
    if language == "console":
        lines = [l[2:] for l in lines if l.startswith("$ ")]
    out = []
    for line in lines:
        line = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
            words = words[1:]
        if "bh-routing" in words:
            words = words[words.index("bh-routing") + 1:]
            cut = next((i for i, w in enumerate(words) if w in ("|", "&&", ";", "||", "&", ">", "2>")), len(words))
            out.append(words[:cut])
    return out


def check_command(args: list[str]) -> None:
    """Parse ``bh-routing ARGS`` with the command's own parser, running nothing."""
    import typer

    from bh_routing.cli import app

    group = typer.main.get_command(app)  # click's classes or typer's vendored copy: no isinstance on them
    ctx = group.context_class(group, info_name="bh-routing")
    if not args or args[0] in ("--help", "-h"):
        return
    cmd = group.get_command(ctx, args[0])
    if cmd is None:
        raise AssertionError(f"bh-routing has no command {args[0]!r}; commands: {', '.join(group.list_commands(ctx))}")
    rest = [a for a in args[1:] if a not in ("--help", "-h")]
    rest = [("X" if a in ("…", "...") else a) for a in rest]
    sub = cmd.context_class(cmd, info_name=args[0], parent=ctx)
    try:  # the option parser alone: unknown options and missing values fail; values are not converted
        cmd.make_parser(sub).parse_args(args=rest)
    except Exception as exc:
        if not hasattr(exc, "format_message"):  # a click (or vendored click) usage error
            raise
        raise AssertionError(f"`bh-routing {' '.join(args)}`: {exc.format_message()}") from None


def check_block(block: Block) -> None:
    """The checks of a block that is not run: syntax, and the ``bh-routing`` options it uses."""
    if block.language == "python":
        compile(block.source, block.where, "exec")
    elif block.language in SHELLS:
        src = block.source if block.language != "console" else "\n".join(
            l[2:] for l in block.source.splitlines() if l.startswith("$ "))
        r = subprocess.run(["bash", "-n"], input=src, text=True, capture_output=True)
        assert r.returncode == 0, f"{block.where}: bash -n: {r.stderr.strip()}"
        for args in commands(block.source, block.language):
            check_command(args)
    else:
        parse_data(block)
    cov = block.marks.get("covered-by")
    if cov:
        test = ROOT / cov
        assert test.is_file(), f"{block.where}: covered-by={cov}: no such test file"
        assert block.path.name in test.read_text(encoding="utf-8"), f"{block.where}: {cov} does not name {block.path.name}"


def parse_data(block: Block) -> None:
    if block.language == "toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        tomllib.loads(block.source)
    elif block.language in ("yaml", "yml"):
        import yaml

        yaml.safe_load(block.source)
    elif block.language == "json":
        json.loads(block.source)


# ------------------------------------------------------------------------------ running
def shell_env(bin_dir: Path) -> dict[str, str]:
    """The environment of shell examples: this checkout's ``bh-routing`` first on PATH, one torch thread."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "bh-routing"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m bh_routing.cli \"$@\"\n")
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def with_quick(source: str) -> str:
    out = []
    for line in source.splitlines():
        if re.search(r"\bbh-routing run\b", line) and "--quick" not in line:
            line = re.sub(r"\bbh-routing run\b", "bh-routing run --quick", line)
        out.append(line)
    return "\n".join(out) + "\n"


def run_block(block: Block, namespace: dict, folder: Path, env: dict[str, str]) -> None:
    if "file" in block.marks:
        target = folder / block.marks["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(block.source), encoding="utf-8")
    if block.checked_only:
        check_block(block)
        return
    needs = _NEEDS.search(block.source) if block.language == "python" or block.language in SHELLS else None
    if needs:  # fail at once, with the fix, rather than after a download or a CUDA error
        raise AssertionError(f"{block.where}: the block names {needs.group(0)!r} and would run here; "
                             f"mark it (<!-- example: gpu hub vllm ... -->) or change it")
    if block.language == "python":
        code = compile(textwrap.dedent(block.source), block.where, "exec")
        exec(code, namespace)
    elif block.language in SHELLS:
        src = block.source
        if block.language == "console":
            src = "\n".join(l[2:] for l in src.splitlines() if l.startswith("$ "))
        if "quick" in block.marks:
            src = with_quick(src)
        for args in commands(src, "bash"):
            check_command(args)
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", src], cwd=folder, env=env, text=True, capture_output=True,
                           timeout=900)
        assert r.returncode == 0, f"{block.where}: exit status {r.returncode}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
    else:
        parse_data(block)


def run_document(path: Path, folder: Path) -> list[Block]:
    """Run or check every block of ``path`` in order, in ``folder`` (the working directory)."""
    env = shell_env(folder / ".example-bin")
    namespace: dict = {"__name__": "__example__"}
    found = blocks(path)
    sys.path.insert(0, str(folder))  # file=PATH modules import as they would from the user's folder
    before = set(sys.modules)
    from bh_routing.core import families

    registered = dict(families._REGISTERED)  # @register in an example is undone afterwards
    old = Path.cwd()
    os.chdir(folder)
    try:
        for block in found:
            run_block(block, namespace, folder, env)
    finally:
        os.chdir(old)
        families._REGISTERED.clear()
        families._REGISTERED.update(registered)
        sys.path.remove(str(folder))
        for name in set(sys.modules) - before:  # modules the examples wrote (file=...) are not kept
            mod = sys.modules.get(name)
            if getattr(mod, "__file__", None) and str(folder) in str(mod.__file__):
                sys.modules.pop(name, None)
    return found

