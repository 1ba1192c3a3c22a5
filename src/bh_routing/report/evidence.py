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
        return f"{lead}: {c['verdict']}"
    return f"{lead}: BH **{p['word']}**. {c['verdict']}"


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
    return lines


def _section(res: dict, figures: list[str]) -> list[str]:
    m = res["derived"]["matched"]
    step = res["steps"]["matched"]
    rows = []
    for r in ([m["primary"]] if m["primary"] else []) + m["grid"]:
        c = r["comparison"]
        name = r["baseline"] + (" (primary)" if r["primary"] else "")
        if c is None:
            rows.append([r["bh_family"], name, r["target_k"], "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", r["word"]])
            continue
        rows.append([r["bh_family"], name, r["target_k"], setting(r), f"{fmt(r['eval_k_bh'])} / {fmt(r['eval_k_baseline'])}",
                     c["mean_diff"], f"{fmt(c['ci_low'])} to {fmt(c['ci_high'])}", c["t_pvalue"],
                     "—" if c["correction"] == "none" else c["p_adjusted"], r["word"]])
    outside = [r for r in m["grid"] if r["comparison"] is None]
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
        "verdict*: too few documents; *outside*: no setting reaches the baseline's k within the tolerance.",
        "",
        f"- {primary_sentence(m)}",
        *grid_counts(m),
        "",
        table(["rule", "vs", "target k", "setting", "mean k eval (rule / baseline)", "Δ loss (nats/token)", "95% CI",
               "raw p", f"{m['correction']} p", "verdict"], rows),
        "",
        *(["Outside: " + "; ".join(f"{r['bh_family']} vs {r['baseline']}: {r['reason']}" for r in outside) + ".", ""]
          if outside else []),
    ]


register_section(Section("matched", _section, ("matched",), 17))
