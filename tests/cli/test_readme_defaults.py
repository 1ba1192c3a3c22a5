"""The README's table of options states RunConfig's defaults (typed once, checked here)."""

from pathlib import Path

from bh_routing.study import RunConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def _row(flag: str) -> str:
    rows = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith(f"| `{flag}")]
    assert len(rows) == 1, f"README has no single row for {flag}"
    return rows[0]


def test_readme_states_the_defaults():
    c = RunConfig()
    lists = {"--alphas": c.alphas, "--temperatures": c.temperatures}
    for flag, values in lists.items():
        assert f"`{','.join(f'{v:g}' for v in values)}`" in _row(flag)
    assert f"`{','.join(c.strategies)}`" in _row("--strategies")
    assert f"`{','.join(c.pvalues)}`" in _row("--pvalues")
    assert f"`{c.bh_pvalues}`" in _row("--bh-pvalues")
    assert f"`{c.alpha:g}`" in _row("--alpha` ")
    for flag, value in (("--eval-sequences", c.eval_sequences), ("--seq-len", c.seq_len), ("--seed", c.seed)):
        assert f"`{value}`" in _row(flag)
    q = RunConfig(quick=True).effective()
    assert f"at most {q.eval_sequences} evaluation and {q.calib_sequences} calibration sequences of at most {q.seq_len} tokens" in _row("--quick")
    assert f"{q.new_tokens} generated tokens, {q.reservoir_size} calibration" in _row("--quick")
    text = README.read_text(encoding="utf-8")
    for name in ("calib_sequences", "reservoir_size", "new_tokens", "min_k"):
        assert f"`{name}` (`{getattr(c, name)}`" in text, name
    assert f"`null` (`{c.null}`)" in text


def test_readme_counts_the_builtin_prompts():
    from bh_routing.analysis.data import DEFAULT_PROMPTS

    assert f"the {len(DEFAULT_PROMPTS)} built-in prompts" in _row("--prompts")


def test_quick_help_states_what_quick_changes():
    from bh_routing.cli import Quick

    q = RunConfig(quick=True).effective()
    assert (f"at most {q.eval_sequences} evaluation and {q.calib_sequences} calibration sequences of at most {q.seq_len} "
            f"tokens, every other sweep value, {q.new_tokens} generated tokens") in Quick.help
