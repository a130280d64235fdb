"""Precision as a setting (lib/precision.py): the names, what each device can compute, and the
autocast that applies it."""

import pytest
import torch

from lib import precision as P


@pytest.mark.parametrize(
    "name, fabric", [("32", "32-true"), ("32-true", "32-true"), ("bf16", "bf16-mixed")]
)
def test_names_on_a_cpu_with_native_bf16(monkeypatch, name, fabric):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.check(name, "cpu") == fabric


def test_what_a_device_cannot_compute_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(P.PrecisionError, match="--precision=bf16: this CPU has no native bf16"):
        P.check("bf16", "cpu", "--precision")
    assert P.check("32", "cpu") == "32-true"
    with pytest.raises(P.PrecisionError, match="precision=16: fp16 needs a GPU"):
        P.check("16", "cpu")
    with pytest.raises(P.PrecisionError, match="precision=64 is not one of 32, bf16, 16"):
        P.check("64", "cpu")
    with pytest.raises(P.PrecisionError, match="not offered on mps"):
        P.check("bf16", "mps")


def test_device_names():
    assert P.device_type(torch.device("cpu")) == "cpu"
    assert P.device_type("cuda:1") == "cuda" and P.device_type("gpu") == "cuda"
    assert P.device_type("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not P.cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_bf16_autocast_on_the_cpu_computes_in_bf16():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with P.autocast("bf16-mixed", "cpu"):
        assert (a @ b).dtype == torch.bfloat16
    with P.autocast("32-true", "cpu"):
        assert (a @ b).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fp16_and_bf16_on_a_gpu():
    assert P.check("16", "cuda") == "16-mixed"
    a = torch.randn(8, 16, device="cuda")
    with P.autocast("16-mixed", "cuda"):
        assert (a @ a.T).dtype == torch.float16
