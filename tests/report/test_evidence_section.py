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


def _at_eval_k(row, word, diff, p, *, at=None):
    """Add the comparison against the baseline mixed to the rule's evaluation k."""
    if word == "outside":
        row.update(comparison_at_eval_k=None, at_eval_k=None, word_at_eval_k="outside",
                   reason_at_eval_k=row["reason"] or "outside: the baseline's family reaches mean k 1.000 to 4.000")
        return row
    c = {**row["comparison"], "mean_diff": diff, "ci_low": diff - 0.02, "ci_high": diff + 0.02, "t_pvalue": p,
         "p_adjusted": p if row["primary"] else min(1.0, 3 * p), "verdict": f"at eval k: verdict of {row['baseline']}",
         "decision": {"wins": "lower", "loses": "higher"}.get(word, "no significant difference")}
    row.update(comparison_at_eval_k=c, word_at_eval_k=word, at_eval_k=at or {
        "lo": row["baseline"], "hi": "TopK(k=next)", "lo_k": 4.0, "hi_k": 5.0, "fraction_hi": 0.05, "mean_k": 4.05})
    return row


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
    # results without the comparison at the evaluation k (before issue #26): its cells say n/a
    assert rows["TopK(k=2)"].endswith("| wins | n/a | n/a | n/a | n/a |") and "| -0.05 |" in rows["TopK(k=2)"]
    assert rows["TopK(k=3)"].endswith("| loses | n/a | n/a | n/a | n/a |") and "| 0.04 |" in rows["TopK(k=3)"]
    assert "| ties | n/a" in rows["TopK(k=5) (primary)"] and "| — |" in rows["TopK(k=5) (primary)"]
    assert "outside: BH reaches mean k 1 to 3" in md


def test_the_comparison_at_the_rules_evaluation_k_is_shown_beside_each_verdict():
    res = _results()
    m = res["derived"]["matched"]
    m["grid"] = [_at_eval_k(m["grid"][0], "ties", -0.004, 0.2), _at_eval_k(m["grid"][1], "loses", 0.05, 0.001),
                 _at_eval_k(m["grid"][2], "outside", None, None), _at_eval_k(m["grid"][3], "outside", None, None)]
    m["grid"][2]["comparison_at_eval_k"] = None  # tested at the target, outside at the evaluation k
    m["primary"] = _at_eval_k(m["primary"], "loses", 0.006, 0.04)
    m.update(family_size_at_eval_k=2, eval_k_gap={"mean": 0.07, "max": 0.11, "n": 4})
    lines = grid_counts(m)
    assert "against topk mixed to BH's evaluation k (holm-corrected over 2 comparisons, a second family): BH wins 0, " \
           "ties 1, loses 1, 2 outside." in lines[1]
    md = "\n".join(_section(res, []))
    rows = {r.split(" | ")[1]: r for r in md.splitlines() if r.startswith("| bh-calibrated")}
    assert rows["TopK(k=2)"].endswith("| wins | -0.004 | -0.024 to 0.016 | 0.6 | ties |")
    assert rows["TopK(k=5) (primary)"].endswith("| ties | 0.006 | -0.014 to 0.026 | 0.04 | loses |")
    assert "by 0.07 experts on average, at most 0.11, over 4 tested comparisons" in md
    assert "Outside at the evaluation k: bh-calibrated vs TopK(k=4): outside: the baseline's family" in md
    s = primary_sentence(m)
    assert "BH **ties**" in s and "Sensitivity comparison (not pre-registered), against TopK(k=5) and TopK(k=next) " \
        "mixed per document (0.05 of documents on TopK(k=next))" in s and "BH **loses**" in s


def test_primary_sentence():
    m = _results()["derived"]["matched"]
    s = primary_sentence(m)
    assert s.startswith("Pre-registered primary comparison (bh-calibrated at α = 0.01") and "BH **ties**" in s
    m["primary"]["comparison"]["decision"] = "too few documents"
    assert "**" not in primary_sentence(m)
    m["primary"] = None
    assert primary_sentence(m).startswith("No pre-registered primary comparison")
