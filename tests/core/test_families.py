"""The table of strategy families: registration three ways, spec strings read and written, the contract."""

import math
import sys
import textwrap

import pytest
import torch

import bh_routing as bhr
from bh_routing.core import families as F
from bh_routing.core.strategies.entropy import PRESETS, entropy_nats

RULE = textwrap.dedent('''
    import torch
    from bh_routing import Strategy

    class MassGap(Strategy):
        name, knob, grid = "mass_gap_{tag}", "ratio", (0.1, 0.3, 0.5, 0.9)

        def __init__(self, ratio=0.5, *, weight_rule="model"):
            self.ratio, self.weight_rule = float(ratio), weight_rule

        def choose(self, logits, probs, *, layer, model_top_k):
            p, order = probs.sort(dim=-1, descending=True)  # (T, E)
            keep = p[:, 1:model_top_k] >= self.ratio * p[:, : model_top_k - 1]  # (T, W - 1)
            return order, 1 + keep.long().cumprod(dim=-1).sum(dim=-1), model_top_k
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module outside the package holding a rule, importable as ``userrules_<tag>``."""
    def make(tag: str, body: str = RULE) -> str:
        (tmp_path / f"userrules_{tag}.py").write_text(body.replace("{tag}", tag))
        monkeypatch.syspath_prepend(str(tmp_path))
        return f"userrules_{tag}"
    yield make
    for name in [n for n in F._REGISTERED if n.startswith("mass_gap_")]:
        del F._REGISTERED[name]


def test_builtin_table_is_the_one_list():
    assert list(F.BUILTIN) == ["topk", "topp", "weight_ratio", "entropy", "bh"]
    for cls in F.BUILTIN.values():
        F.check_family(cls)  # each has a name, a knob its constructor takes, a grid


@pytest.mark.parametrize("strategy", [bhr.TopK(3), bhr.TopP(0.7, max_k=6), bhr.WeightRatio(0.2, min_k=2),
                                      bhr.Entropy(1.5, preset="adaptive-k-olmoe"),
                                      bhr.BH(0.1, selection="router", temperature=2.0)])
def test_spec_round_trip(strategy):
    spec = F.spec_of(strategy)
    again = F.strategy_from_spec(spec)
    assert type(again) is type(strategy) and again.describe() == strategy.describe()
    assert F.describe_to_strategy(strategy.describe()).describe() == strategy.describe()


def test_module_class_way(user_module):
    mod = user_module("a")
    s = F.strategy_from_spec(f"{mod}:MassGap:ratio=0.3")
    assert s.ratio == 0.3 and s.name == "mass_gap_a"
    assert F.spec_of(s) == f"{mod}:MassGap:ratio=0.3,weight_rule=model"
    assert F.get_family("mass_gap_a") is type(s)  # known by name once imported


def test_decorator_way(user_module):
    mod = __import__(user_module("b"))
    assert "mass_gap_b" not in F.available()
    assert bhr.register(mod.MassGap) is mod.MassGap
    assert F.strategy_from_spec("mass_gap_b:ratio=0.9").ratio == 0.9


def test_entry_point_way(tmp_path, user_module, monkeypatch):
    mod = user_module("c")
    dist = tmp_path / "userrules_c-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: userrules-c\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{F.ENTRY_POINT_GROUP}]\nmass_gap_c = {mod}:MassGap\n")
    assert "mass_gap_c" in F.available()
    assert F.strategy_from_spec("mass_gap_c:ratio=0.5").name == "mass_gap_c"


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown strategy 'nope'"),
    ("entropy:scale=-1", "scale must be a finite number > 0"),
    ("entropy:scal=1", "unexpected keyword argument 'scal'"),
    ("no_such_module_xyz:Rule", "cannot import routing rule 'no_such_module_xyz:Rule'"),
    ("bh_routing.core:Nope", "module 'bh_routing.core' has no 'Nope'"),
    ("bh_routing.core:Calibration", "must be a subclass of bh_routing.Strategy"),
])
def test_bad_specs_one_line(spec, message):
    with pytest.raises(F.StrategySpecError if "subclass" not in message else F.StrategyContractError) as err:
        F.strategy_from_spec(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


BREACHES = {
    "counts": ("return order, torch.zeros(len(probs), dtype=torch.long), model_top_k", "counts must lie in [1, width=8]"),
    "ids": ("return order + 64, torch.ones(len(probs), dtype=torch.long), model_top_k", "expert ids must lie in [0, 64)"),
    "width": ("return order, torch.ones(len(probs), dtype=torch.long), 0.5", "width must be an int"),
    "repeat": ("return torch.zeros_like(order), torch.full((len(probs),), 2), model_top_k", "repeat an id"),
}


@pytest.mark.parametrize("breach", sorted(BREACHES))
def test_contract_breaches_name_the_rule(breach, user_module):
    line, message = BREACHES[breach]
    body = RULE.replace("        return order, 1 + keep.long().cumprod(dim=-1).sum(dim=-1), model_top_k", f"        {line}")
    assert body != RULE
    mod = user_module(f"bad_{breach}", body)
    with pytest.raises(F.StrategyContractError) as err:
        F.check_contract(F.strategy_from_spec(f"{mod}:MassGap"))
    assert message in str(err.value) and f"{mod}:MassGap" in str(err.value)


def test_nan_weights_are_a_breach():
    class NaNWeights(bhr.TopK):
        name = "nan_weights"

        def route(self, logits, **kw):
            r = super().route(logits, **kw)
            return type(r)(r.indices, r.weights * float("nan"), r.counts, r.num_experts)

    with pytest.raises(F.StrategyContractError, match="weights are not finite"):
        F.check_contract(NaNWeights(8))


def test_knob_must_be_a_constructor_parameter():
    class NoKnob(bhr.TopK):
        name, knob = "no_knob", "kk"

    with pytest.raises(F.StrategyContractError, match="knob must name a constructor parameter"):
        F.check_family(NoKnob)


# ---------------------------------------------------------------------------- the entropy ladder
def _probs_with_entropy(h: float, e: int = 64) -> torch.Tensor:
    """(1, E) probabilities whose entropy is ``h`` nats: mass q on one expert, the rest uniform."""
    lo, hi = 1e-9, 1 - 1e-9  # entropy falls as q rises
    for _ in range(200):
        q = 0.5 * (lo + hi)
        rest = (1 - q) / (e - 1)
        val = -(q * math.log(q) + (e - 1) * rest * math.log(rest))
        lo, hi = (q, hi) if val > h else (lo, q)
    p = torch.full((1, e), (1 - q) / (e - 1), dtype=torch.float64)
    p[0, 0] = q
    return p


@pytest.mark.parametrize("h, k", [(0.5, 1), (0.69, 1), (0.71, 2), (1.29, 2), (1.31, 4), (3.0, 4)])
def test_published_preset_exactly(h, k):
    """adaptive-k-routing's OLMoE preset: k = 1 if H < 0.7, 2 if H < 1.3, else 4."""
    p = _probs_with_entropy(h)
    assert float(entropy_nats(p)) == pytest.approx(h, abs=1e-6)
    logits = torch.log(p).float()
    r = bhr.Entropy(1.0, preset="adaptive-k-olmoe").route(logits, model_top_k=8)
    assert int(r.counts) == k and r.indices.shape[1] == 4


def test_widened_ladder_reaches_the_models_k_and_scale_moves_k_down():
    assert PRESETS["widened"][0] == (0.7, 1.3, 2.0)
    logits = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0)) * 2
    means = [bhr.Entropy(s).route(logits, model_top_k=8).counts.float().mean().item() for s in (0.01, 1.0, 4.0)]
    assert means[0] == 8.0 and means[0] > means[1] > means[2]
    assert bhr.Entropy(100.0).route(logits, model_top_k=8).counts.max() == 1
