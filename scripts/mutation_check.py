"""Plant known bugs in the statistics code, one at a time, and check that a test turns red for each.

Run by hand (not in CI; a few minutes on one core)::

    python scripts/mutation_check.py            # all mutations
    python scripts/mutation_check.py --list     # names only
    python scripts/mutation_check.py NAME ...   # some of them

Each mutation is a text substitution in a copy of ``src/`` and ``tests/`` made in a temporary
folder (the checkout is never modified); the substituted text must occur in the file exactly as
written, so a mutation that no longer applies fails loudly instead of passing silently. The
mutated copy runs the tests listed with the mutation (``pytest -x``); the mutation is *killed*
when pytest fails. The script exits 1 when any mutation survives or does not apply.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
A = "src/bh_routing/analysis"
STATS_TESTS = ["tests/analysis/test_stats.py", "tests/analysis/test_derive.py"]
DERIVE_TESTS = ["tests/analysis/test_derive.py"]
MATCH_TESTS = ["tests/analysis/test_matching.py"]
REPORT_TESTS = ["tests/analysis/test_derive.py", "tests/report/test_evidence_section.py"]


@dataclass
class Mutation:
    name: str
    file: str  # relative to the repository root; "*" = every .py file under analysis/ and report/ (and below)
    old: str
    new: str
    tests: list[str]
    regex: bool = False


MUTATIONS = [
    # the six bugs of issue #12, in the code as it is now
    Mutation("verdict inverted", f"{A}/stats.py",
             'return "lower" if mean_diff < 0 else "higher"', 'return "higher" if mean_diff < 0 else "lower"', STATS_TESTS),
    Mutation("matching bracket swapped (search)", f"{A}/matching.py",
             "below = [(a, k) for a, k, _ in self._seen if k < target]",
             "below = [(a, k) for a, k, _ in self._seen if k >= target]", MATCH_TESTS),
    Mutation("matching bisection swapped (offline solver)", f"{A}/matching.py",
             "            if self.mean_k(math.exp(mid)) < target:\n                lo = mid\n            else:\n                hi = mid",
             "            if self.mean_k(math.exp(mid)) < target:\n                hi = mid\n            else:\n                lo = mid",
             MATCH_TESTS),
    Mutation("per-document weights swapped", f"{A}/evaluate.py",
             "num = np.bincount(pos, weights=values * w, minlength=len(ids))",
             "num = np.bincount(pos, weights=values, minlength=len(ids))", DERIVE_TESTS),
    Mutation("outside check removed (reach)", f"{A}/matching.py",
             "if not k_min - self.tol <= target <= k_max + self.tol:", "if False:", MATCH_TESTS),
    Mutation("outside check removed (verdicts)", f"{A}/derive.py",
             'if not t["matched"] or t.get("run") is None or base is None:',
             'if t.get("run") is None or base is None:', DERIVE_TESTS),
    Mutation("reduction miscomputed", f"{A}/derive.py",
             "return 100.0 * (1.0 - mean_k / top_k)", "return 100.0 * (1.0 - top_k / mean_k)", DERIVE_TESTS),
    Mutation("ratio inverted", f"{A}/derive.py",
             "d = document_loss(run, documents) - document_loss(ref, documents)",
             "d = document_loss(ref, documents) - document_loss(run, documents)", DERIVE_TESTS),
    Mutation("significance rule switched (raw p decides)", f"{A}/stats.py",
             'decision = decide(out["mean_diff"], p_adjusted, n=n, alpha=alpha)',
             'decision = decide(out["mean_diff"], out["t_pvalue"], n=n, alpha=alpha)', STATS_TESTS),
    Mutation("significance rule switched (Wilcoxon decides)", f"{A}/stats.py",
             'return finish_verdict(out, p_adjusted=ti["pvalue"] if p_adjusted is None else p_adjusted,',
             'return finish_verdict(out, p_adjusted=out["wilcoxon_pvalue"] if p_adjusted is None else p_adjusted,',
             STATS_TESTS),
    Mutation("significance rule switched (p <= alpha)", f"{A}/stats.py",
             "if p_adjusted is None or not p_adjusted < alpha:", "if p_adjusted is None or not p_adjusted <= alpha:",
             STATS_TESTS),
    # further ways to get the evidence wrong
    Mutation("no minimum number of documents", f"{A}/stats.py",
             "    if n < min_documents:\n", "    if False:\n", STATS_TESTS),
    Mutation("no multiple-comparison correction", f"{A}/stats.py",
             "adjusted = holm([_raw_p(c) for c in tested]) if tested else []",
             "adjusted = [_raw_p(c) for c in tested]", STATS_TESTS),
    Mutation("Holm step-down replaced by Bonferroni", f"{A}/stats.py",
             "scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])", "scaled = np.minimum(1.0, m * p[order])",
             STATS_TESTS),
    Mutation("t quantile replaced by the normal one", f"{A}/stats.py",
             "half = float(stats.t.ppf((1 + level) / 2, n - 1)) * se", "half = float(stats.norm.ppf((1 + level) / 2)) * se",
             STATS_TESTS),
    Mutation("primary comparison Holm-adjusted with the grid", f"{A}/derive.py",
             'tested = [r["comparison"] for r in grid if r["comparison"] is not None]',
             'tested = [r["comparison"] for r in [primary, *grid] if r is not None and r["comparison"] is not None]',
             DERIVE_TESTS),
    Mutation("evaluation documents shared with calibration", f"{A}/data.py",
             "calibration = _round_robin(ordered[n_eval:], calib_sequences)",
             "calibration = _round_robin(ordered, calib_sequences)", ["tests/analysis/test_data.py"]),
    # the words: swapping "wins" and "loses" anywhere in the analysis and report code
    Mutation('"wins" <-> "loses" everywhere in analysis/ and report/', "*", r"\b(wins|loses)\b", "SWAP", REPORT_TESTS,
             regex=True),
    Mutation('"wins" <-> "loses" in analysis/derive.py only', f"{A}/derive.py", r"\b(wins|loses)\b", "SWAP",
             REPORT_TESTS, regex=True),
    Mutation('"wins" <-> "loses" in report/evidence.py only', "src/bh_routing/report/evidence.py", r"\b(wins|loses)\b",
             "SWAP", REPORT_TESTS, regex=True),
]


def apply(tree: Path, m: Mutation) -> int:
    """Apply ``m`` inside ``tree``; the number of substitutions."""
    if m.file == "*":
        files = [p for d in ("src/bh_routing/analysis", "src/bh_routing/report") for p in (tree / d).rglob("*.py")]
    else:
        files = [tree / m.file]
    count = 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        if m.regex:
            new, n = re.subn(m.old, lambda x: {"wins": "loses", "loses": "wins"}[x.group(1)], text)
        else:
            n = text.count(m.old)
            if m.file != "*" and n != 1:
                raise RuntimeError(f"{m.name}: expected the text once in {m.file}, found it {n} times")
            new = text.replace(m.old, m.new)
        if n:
            path.write_text(new, encoding="utf-8")
        count += n
    if count == 0:
        raise RuntimeError(f"{m.name}: nothing to mutate")
    return count


def run(m: Mutation, python: str) -> tuple[bool, str, float]:
    """(killed, last line of pytest, seconds)."""
    with tempfile.TemporaryDirectory(prefix="bhr-mutant-") as tmp:
        tree = Path(tmp)
        for d in ("src", "tests"):
            shutil.copytree(ROOT / d, tree / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
        n = apply(tree, m)
        tests = [t for t in m.tests if (tree / t).is_file()]
        env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
        t0 = time.time()
        proc = subprocess.run([python, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "-x", *tests],
                              cwd=tree, env=env, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        return proc.returncode != 0, f"({n} substitution{'s' * (n > 1)}) {lines[-1] if lines else proc.stderr[-200:]}", time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="mutations to run (default: all)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    if args.list or not chosen:
        print("\n".join(m.name for m in MUTATIONS))
        return
    survived = 0
    for m in chosen:
        try:
            killed, last, secs = run(m, sys.executable)
        except RuntimeError as exc:
            killed, last, secs = False, f"DOES NOT APPLY: {exc}", 0.0
        survived += not killed
        print(f"{'killed  ' if killed else 'SURVIVED'} {m.name:55s} {secs:5.1f}s  {last}", flush=True)
    print(f"{len(chosen) - survived} of {len(chosen)} mutations killed")
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
