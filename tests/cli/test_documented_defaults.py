"""The defaults the command's help states (and so the generated docs/cli.md) are RunConfig's."""

import re

from bh_routing import cli
from bh_routing.analysis.data import DEFAULT_PROMPTS
from bh_routing.study import RunConfig


def test_help_defaults_are_runconfigs():
    c = RunConfig()
    stated = {"--eval-sequences": cli.EvalSeqs, "--seq-len": cli.SeqLen, "--seed": cli.Seed, "--alpha": cli.Alpha}
    fields = {"--eval-sequences": "eval_sequences", "--seq-len": "seq_len", "--seed": "seed", "--alpha": "alpha"}
    for flag, option in stated.items():
        (value,) = re.findall(r"\(default ([0-9.]+)\)", option.help)
        assert float(value) == getattr(c, fields[flag]), flag


def test_help_counts_the_builtin_prompts():
    assert f"the {len(DEFAULT_PROMPTS)} built-in prompts" in cli.Prompts.help


def test_quick_help_states_what_quick_changes():
    q = RunConfig(quick=True).effective()
    assert (f"at most {q.eval_sequences} evaluation and {q.calib_sequences} calibration sequences of at most {q.seq_len} "
            f"tokens, every other sweep value, {q.new_tokens} generated tokens") in cli.Quick.help
