"""The matched-comparisons text of RESULTS.md, from a hand-built results dict: the words follow the numbers."""

from bh_routing.report.evidence import _section, grid_counts, primary_sentence


def _row(baseline, word, diff, p, p_adj, *, primary=False, decision=None):
    c = None if word == "outside" else {
        "mean_diff": diff, "ci_low": diff - 0.01, "ci_high": diff + 0.01, "t_pvalue": p, "p_adjusted": p_adj,
        "correction": "none" if primary else "holm", "decision": decision or {"wins": "lower", "loses": "higher"}.get(word, "no significant difference"),
        "verdict": f"verdict of {baseline}",
    }
    return {"bh_family": "bh-calibrated", "baseline": baseline, "baseline_family": baseline.split("(")[0].lower(),
            "target_k": 4.0, "alpha": 0.01, "calibration_k": 4.0, "matched": word != "outside", "primary": primary,
            "comparison": c, "word": word, "eval_k_bh": 4.05, "eval_k_baseline": 4.0,
            "reason": "outside: BH reaches mean k 1 to 3" if word == "outside" else None}


def _results():
    grid = [_row("TopK(k=2)", "wins", -0.05, 0.001, 0.003), _row("TopK(k=3)", "loses", 0.04, 0.002, 0.004),
            _row("TopK(k=4)", "ties", 0.001, 0.6, 1.0), _row("TopK(k=7)", "outside", None, None, None)]
    primary = _row("TopK(k=5)", "ties", 0.003, 0.25, 0.25, primary=True)
    return {"derived": {"matched": {"primary": primary, "grid": grid, "correction": "holm", "family_size": 3}},
            "steps": {"matched": {"match_windows": 16, "tolerance": 0.02}}}


def test_counts_and_table_carry_the_derived_words():
    res = _results()
    (line,) = grid_counts(res["derived"]["matched"])
    assert "BH wins 1, ties 1, loses 1 of 4 targets, 1 outside" in line and "holm-corrected over 3 comparisons" in line
    md = "\n".join(_section(res, []))
    rows = {r.split(" | ")[1]: r for r in md.splitlines() if r.startswith("| bh-calibrated")}
    assert rows["TopK(k=2)"].endswith("| wins |") and "| -0.05 |" in rows["TopK(k=2)"]
    assert rows["TopK(k=3)"].endswith("| loses |") and "| 0.04 |" in rows["TopK(k=3)"]
    assert rows["TopK(k=5) (primary)"].endswith("| ties |") and "| — |" in rows["TopK(k=5) (primary)"]
    assert "outside: BH reaches mean k 1 to 3" in md


def test_primary_sentence():
    m = _results()["derived"]["matched"]
    s = primary_sentence(m)
    assert s.startswith("Pre-registered primary comparison (bh-calibrated at α = 0.01") and "BH **ties**" in s
    m["primary"]["comparison"]["decision"] = "too few documents"
    assert "**" not in primary_sentence(m)
    m["primary"] = None
    assert primary_sentence(m).startswith("No pre-registered primary comparison")
