"""The matched-k comparisons in RESULTS.md: the pre-registered primary comparison and the Holm-corrected grid.

Every sentence is built from ``results["derived"]["matched"]`` (``analysis.derive.matched_verdicts``):
the words *wins*, *loses*, *ties*, *no verdict* and *outside* are the ones the derivation chose by the
one verdict rule (``analysis.stats.decide``).
"""

from __future__ import annotations

from .base import fmt, table
from .registry import Section, register_section

WORDS = ("wins", "ties", "loses", "no verdict", "outside")


def primary_sentence(m: dict) -> str:
    """The pre-registered comparison in one sentence (or why there is none)."""
    p = m.get("primary")
    if p is None:
        return "No pre-registered primary comparison in this run (no BH method matched to a top-k k)."
    if p["comparison"] is None:
        return (f"Pre-registered primary comparison, {p['bh_family']} against {p['baseline']}: not tested "
                f"({p.get('reason')}).")
    c = p["comparison"]
    lead = (f"Pre-registered primary comparison ({p['bh_family']} at α = {fmt(p['alpha'])}, matched on calibration text "
            f"to {p['baseline']}; mean k on the evaluation documents {fmt(p['eval_k_bh'])} vs {fmt(p['eval_k_baseline'])})")
    if c["decision"] == "too few documents":
        return f"{lead}: {c['verdict']}" + eval_k_sentence(p)
    return f"{lead}: BH **{p['word']}**. {c['verdict']}" + eval_k_sentence(p)


def eval_k_sentence(r: dict) -> str:
    """The sensitivity comparison of a row: the rule against the baseline mixed to the rule's evaluation k."""
    if "word_at_eval_k" not in r:  # results of a release before issue #26
        return ""
    c, at = r.get("comparison_at_eval_k"), r.get("at_eval_k")
    if c is None:
        return f" Against the baseline mixed to the rule's evaluation k: {r.get('reason_at_eval_k')}."
    mix = at["lo"] if at["lo"] == at["hi"] else (
        f"{at['lo']} and {at['hi']} mixed per document ({fmt(at['fraction_hi'])} of documents on {at['hi']})")
    word = f"**{r['word_at_eval_k']}**" if c["decision"] != "too few documents" else "no verdict"
    return (f" Sensitivity comparison (not pre-registered), against {mix}, whose expected mean k equals the rule's "
            f"{fmt(at['mean_k'])} on the evaluation documents: {rule_name(r['bh_family'])} {word}. {c['verdict']}")


def rule_name(family: str) -> str:
    """``"bh-calibrated-router"`` -> "BH"; any other family by its own name."""
    return "BH" if family.startswith("bh-") else family


def setting(r: dict) -> str:
    """The matched setting of a row: ``α = 0.05`` for BH, ``<knob> = <value>`` for any other family."""
    if r["alpha"] is None:
        return "n/a"
    if r["bh_family"].startswith("bh-"):
        return f"α = {fmt(r['alpha'])}"
    from ..core.families import StrategySpecError, get_family

    try:
        knob = get_family(r["bh_family"]).knob
    except StrategySpecError:  # a user family not importable here: its value alone
        knob = "knob"
    return f"{knob} = {fmt(r['alpha'])}"


def grid_counts(m: dict) -> list[str]:
    """One line per (rule, baseline family): wins / ties / losses after Holm's correction."""
    lines = []
    for fam in sorted({(r["bh_family"], r["baseline_family"]) for r in m["grid"]}):
        rows = [r for r in m["grid"] if (r["bh_family"], r["baseline_family"]) == fam]
        n = {w: sum(r["word"] == w for r in rows) for w in WORDS}
        who = rule_name(fam[0])
        lines.append(
            f"- {fam[0]} against **{fam[1]}** at matched mean k ({m['correction']}-corrected over {m['family_size']} "
            f"comparisons): {who} wins {n['wins']}, ties {n['ties']}, loses {n['loses']} of {len(rows)} targets"
            + (f", {n['no verdict']} without a verdict (too few documents)" if n["no verdict"] else "")
            + (f", {n['outside']} outside {who}'s reach on calibration text" if n["outside"] else "") + "."
        )
        if all("word_at_eval_k" in r for r in rows):
            e = {w: sum(r["word_at_eval_k"] == w for r in rows) for w in WORDS}
            lines.append(
                f"  - against {fam[1]} mixed to {who}'s evaluation k ({m['correction']}-corrected over "
                f"{m.get('family_size_at_eval_k', 0)} comparisons, a second family): {who} wins {e['wins']}, ties "
                f"{e['ties']}, loses {e['loses']}" + (f", {e['no verdict']} without a verdict" if e["no verdict"] else "")
                + (f", {e['outside']} outside" if e["outside"] else "") + ".")
    return lines


def _at_eval_k(r: dict) -> list:
    """The table cells of a row's comparison at the rule's evaluation k: Δ, 95% CI, p, verdict."""
    c = r.get("comparison_at_eval_k")
    if c is None:
        return ["n/a", "n/a", "n/a", r.get("word_at_eval_k", "n/a")]
    p = c["t_pvalue"] if c["correction"] == "none" else c["p_adjusted"]
    return [c["mean_diff"], f"{fmt(c['ci_low'])} to {fmt(c['ci_high'])}", p, r["word_at_eval_k"]]


def _section(res: dict, figures: list[str]) -> list[str]:
    m = res["derived"]["matched"]
    step = res["steps"]["matched"]
    rows = []
    for r in ([m["primary"]] if m["primary"] else []) + m["grid"]:
        c = r["comparison"]
        name = r["baseline"] + (" (primary)" if r["primary"] else "")
        if c is None:
            rows.append([r["bh_family"], name, r["target_k"], "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", r["word"],
                         *_at_eval_k(r)])
            continue
        rows.append([r["bh_family"], name, r["target_k"], setting(r), f"{fmt(r['eval_k_bh'])} / {fmt(r['eval_k_baseline'])}",
                     c["mean_diff"], f"{fmt(c['ci_low'])} to {fmt(c['ci_high'])}", c["t_pvalue"],
                     "—" if c["correction"] == "none" else c["p_adjusted"], r["word"], *_at_eval_k(r)])
    outside = [r for r in m["grid"] if r["comparison"] is None]
    beyond = [r for r in m["grid"] if r["comparison"] is not None and r.get("comparison_at_eval_k") is None
              and "word_at_eval_k" in r]
    gap = m.get("eval_k_gap")
    return [
        "## Matched comparisons: BH against the baselines at the same mean k",
        "",
        f"For each baseline setting, α was searched on the calibration documents only (bisection in log α, "
        f"{step['match_windows']} calibration windows, patch mode) until BH's mean experts per token was within "
        f"{fmt(step['tolerance'])} of the baseline's there; every other family (the entropy ladder, a user's rule) "
        "was matched to each top-k k the same way by its own knob, and compared with top-k and with BH's run at "
        "that k. Each pair of runs was then compared on the "
        "evaluation documents, loss per token paired by document (two-sided paired t-test, 95% t-interval). "
        "The primary comparison was fixed in advance (`docs/preregistration.md`) and is tested alone at 0.05; "
        f"the other {m['family_size']} tested comparisons are one family with {m['correction']}-adjusted p-values. "
        "*wins*: the rule's loss significantly lower; *loses*: higher; *ties*: no significant difference; *no "
        "verdict*: too few documents; *outside*: no setting reaches the baseline's k within the tolerance "
        "(`bh_routing.analysis.matching`: a target is tested iff the search met it within the tolerance on the "
        "calibration windows).",
        "",
        "On the evaluation documents the rule's mean k differs from its target by sampling"
        + (f" (by {fmt(gap['mean'])} experts on average, at most {fmt(gap['max'])}, over {gap['n']} tested "
           "comparisons)" if gap else "") + ", and extra experts favour the rule. So every tested comparison is also "
        "shown *at the rule's evaluation k*: against the baseline's family randomised per document between its two "
        "runs whose evaluation mean k bracket the rule's (top-k: floor and ceil), in the proportion whose expected "
        "mean k equals the rule's exactly; each document's loss is that randomised rule's exact expectation "
        "(`bh_routing.analysis.mixing`, no random draw). The primary's counterpart is a sensitivity comparison read "
        f"alone at 0.05 (raw p); the grid's {m.get('family_size_at_eval_k', 0)} are a second {m['correction']} "
        "family. *outside* there: the rule's evaluation k lies beyond the family's evaluated runs.",
        "",
        f"- {primary_sentence(m)}",
        *grid_counts(m),
        "",
        table(["rule", "vs", "target k", "setting", "mean k eval (rule / baseline)", "Δ loss (nats/token)", "95% CI",
               "raw p", f"{m['correction']} p", "verdict", "Δ at eval k (vs mixed baseline)", "95% CI at eval k",
               f"p at eval k (primary raw, grid {m['correction']})", "verdict at eval k"], rows),
        "",
        *(["Outside: " + "; ".join(f"{r['bh_family']} vs {r['baseline']}: {r['reason']}" for r in outside) + ".", ""]
          if outside else []),
        *(["Outside at the evaluation k: " + "; ".join(f"{r['bh_family']} vs {r['baseline']}: {r['reason_at_eval_k']}"
                                                     for r in beyond) + ".", ""] if beyond else []),
    ]


register_section(Section("matched", _section, ("matched",), 17))
