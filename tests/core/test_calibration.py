"""Streaming calibration: bounded memory, uniform sampling, safe save/load, identity checks."""

import pytest
import torch
from safetensors.torch import save_file

from bh_routing import Calibration, CalibrationBuilder, CalibrationMismatchError


def _fit(null="unrouted", reservoir=256, chunks=5, seed=0):
    b = CalibrationBuilder(num_layers=2, num_experts=8, top_k=2, null=null, reservoir_size=reservoir, seed=seed)
    g = torch.Generator().manual_seed(123)
    for _ in range(chunks):
        for layer in range(2):
            b.update(layer, torch.randn(100, 8, generator=g) + layer)
    return b.finalize(model_name="tiny", model_fingerprint="abc")


def test_memory_is_bounded_and_counts_are_right():
    cal = _fit(null="all", reservoir=256, chunks=5)
    assert cal.null_sorted.shape == (2, 8, 256)
    assert torch.all(cal.null_count == 256) and cal.num_tokens == 500
    cal = _fit(null="all", reservoir=1000, chunks=5)  # fewer values than room: all kept, padded
    assert torch.all(cal.null_count == 500)
    assert torch.isinf(cal.null_sorted[..., :500]).all() and torch.isfinite(cal.null_sorted[..., 500:]).all()


def test_unrouted_null_excludes_the_top_k():
    b = CalibrationBuilder(num_layers=1, num_experts=4, top_k=1, reservoir_size=10)
    z = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [5.0, 1, 0, 0]])
    b.update(0, z)
    cal = b.finalize(model_name="m", model_fingerprint="f")
    assert cal.null_count[0].tolist() == [1, 2, 3, 3]  # expert 0 was the top-1 on tokens 0 and 2
    assert cal.null_sorted[0, 0, -1].item() == 0.0  # its only null logit is the 0 of token 1


def test_the_kept_sample_is_uniform():
    # stream 0..9999 in chunks; the kept 500 should look uniform over the stream
    b = CalibrationBuilder(num_layers=1, num_experts=1, top_k=1, null="all", reservoir_size=500, seed=5)
    x = torch.arange(10000, dtype=torch.float32)
    for chunk in x.split(700):
        b.update(0, chunk[:, None])
    kept = b.finalize(model_name="m", model_fingerprint="f").null_sorted[0, 0]
    from scipy.stats import kstest

    assert kstest(kept.numpy() / 10000, "uniform").pvalue > 0.01


def test_same_seed_same_calibration():
    a, b = _fit(seed=1), _fit(seed=1)
    assert torch.equal(a.null_sorted, b.null_sorted)


def test_save_load_round_trip(tmp_path):
    cal = _fit()
    path = cal.save(tmp_path / "cal.safetensors")
    assert not (tmp_path / "cal.safetensors.tmp").exists()
    back = Calibration.load(path)
    assert torch.equal(back.null_sorted, cal.null_sorted) and torch.equal(back.null_count, cal.null_count)
    assert back.summary() == cal.summary()
    z = torch.randn(10, 8)
    assert torch.equal(back.pvalues(z, 1), cal.pvalues(z, 1))


def test_refuses_other_models():
    cal = _fit()
    cal.check_matches(model_fingerprint="abc", num_layers=2, num_experts=8)
    with pytest.raises(CalibrationMismatchError, match=r"calibration was made for tiny \(2 MoE layers x 8 experts\), not for big \(16 MoE layers x 64 experts\)"):
        cal.check_matches(model_fingerprint="abc", num_layers=16, num_experts=64, model_name="big")
    with pytest.raises(CalibrationMismatchError, match="whose router weights differ"):
        cal.check_matches(model_fingerprint="zzz", num_layers=2, num_experts=8, model_name="other")
    with pytest.raises(CalibrationMismatchError, match="calibration has 8 experts, the logits have 4"):
        cal.pvalues(torch.randn(3, 4), 0)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\), got 2"):
        cal.pvalues(torch.randn(3, 8), 2)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="calibration file not found"):
        Calibration.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a bh-routing calibration file"):
        Calibration.load(junk)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a bh-routing calibration file"):
        Calibration.load(other)


def test_builder_errors():
    with pytest.raises(ValueError, match=r"null must be one of \('unrouted', 'all'\), got 'some'"):
        CalibrationBuilder(num_layers=1, num_experts=4, top_k=1, null="some")
    b = CalibrationBuilder(num_layers=2, num_experts=4, top_k=1)
    with pytest.raises(ValueError, match="logits must have 4 experts, got 3"):
        b.update(0, torch.randn(2, 3))
    b.update(0, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"calibration saw no tokens for MoE layers \[1\]"):
        b.finalize(model_name="m", model_fingerprint="f")


def test_standardized_null_is_pooled_from_null_pairs():
    b = CalibrationBuilder(num_layers=1, num_experts=4, top_k=1, reservoir_size=10, pooled_size=100)
    z = torch.tensor([[5.0, 1, 0, -1], [0, 5.0, 2, 1], [5.0, 1, 0, 0]])
    b.update(0, z)
    cal = b.finalize(model_name="m", model_fingerprint="f")
    assert cal.std_count.tolist() == [9]  # 3 tokens x 3 unrouted experts
    # tokens 0 and 1: lower median 0 and 1, MAD 1 -> unrouted scores +-1/1.4826 and 0;
    # token 2: MAD 0 -> every score 0
    s = 1 / 1.482602218505602
    assert torch.isinf(cal.std_sorted[0, :-9]).all()
    torch.testing.assert_close(cal.std_sorted[0, -9:], torch.tensor([-s, -s, 0, 0, 0, 0, 0, s, s]))
    assert cal.summary()["standardized_null_size"] == 9


def test_standardized_round_trip_and_format_1_files(tmp_path):
    cal = _fit()
    back = Calibration.load(cal.save(tmp_path / "v2.safetensors"))
    assert torch.equal(back.std_sorted, cal.std_sorted) and torch.equal(back.std_count, cal.std_count)
    z = torch.randn(10, 8)
    assert torch.equal(back.standardized_pvalues(z, 1), cal.standardized_pvalues(z, 1))
    # a file written before the standardised null existed: loads, calibrated works, standardized says why not
    old = tmp_path / "v1.safetensors"
    meta = {
        "format": "bh_routing.calibration", "format_version": "1", "model_name": "tiny",
        "model_fingerprint": "abc", "num_layers": "2", "num_experts": "8", "top_k": "2",
        "null": "unrouted", "num_tokens": "500",
    }
    save_file({"null_sorted": cal.null_sorted, "null_count": cal.null_count}, str(old), metadata=meta)
    v1 = Calibration.load(old)
    assert torch.equal(v1.pvalues(z, 1), cal.pvalues(z, 1)) and v1.std_sorted is None
    with pytest.raises(ValueError, match=r"no standardised null .*format 1.*run `bh-routing calibrate` again"):
        v1.standardized_pvalues(z, 1)
    from bh_routing import BH

    with pytest.raises(ValueError, match="no standardised null"):
        BH(0.1, pvalues="standardized", calibration=v1)
    assert Calibration.load(v1.save(tmp_path / "again.safetensors")).std_sorted is None
    meta["format_version"] = "9"
    save_file({"null_sorted": cal.null_sorted, "null_count": cal.null_count}, str(old), metadata=meta)
    with pytest.raises(ValueError, match="has format version 9; this bh-routing reads 1 and 2"):
        Calibration.load(old)
