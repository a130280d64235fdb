"""Numeric precision of training and embedding: 32 bits (the original's; the default, results
identical to it) or mixed precision by autocast, ``bf16`` (on a GPU, or on a CPU that computes
bf16 natively: AVX512-BF16 or AMX) or ``16`` (fp16, on a GPU only). Names are Fabric's
(``32-true``, ``bf16-mixed``, ``16-mixed``) or their short forms."""

import contextlib

import torch

from lib.errors import UsageError

NAMES = {
    "32": "32-true",
    "32-true": "32-true",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "16": "16-mixed",
    "16-mixed": "16-mixed",
}
DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class PrecisionError(UsageError):
    """A precision that does not exist or that the device cannot compute."""


def cpu_has_native_bf16():
    """True when this CPU computes bf16 natively (oneDNN's own test: AVX512-BF16 or AMX on x86,
    the bf16 extensions on ARM); emulated bf16 is slower than fp32, so it is not offered."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def device_type(device):
    """'cpu', 'cuda', 'mps' of a device, a device name ('cuda:1') or an accelerator name ('gpu',
    'auto' = cuda when there is one)."""
    name = str(device.type if isinstance(device, torch.device) else device).split(":")[0]
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if name == "gpu" else name


def check(precision, device, what="precision"):
    """Fabric's name of ``precision`` for ``device`` (see ``device_type``); ``PrecisionError``
    naming the argument ``what`` when the precision is unknown or the device cannot compute
    it."""
    name = NAMES.get(str(precision))
    if name is None:
        raise PrecisionError(
            f"{what}={precision} is not one of 32, bf16, 16 (or {', '.join(NAMES)})"
        )
    kind = device_type(device)
    if name == "16-mixed" and kind != "cuda":
        raise PrecisionError(f"{what}={precision}: fp16 needs a GPU; use 32 (or bf16)")
    if name == "bf16-mixed" and kind == "cpu" and not cpu_has_native_bf16():
        raise PrecisionError(
            f"{what}={precision}: this CPU has no native bf16 (AVX512-BF16 or AMX), where it "
            "would be slower than 32 bits; use 32"
        )
    if name == "bf16-mixed" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise PrecisionError(f"{what}={precision}: this GPU has no bf16; use 16 or 32")
    if name != "32-true" and kind == "mps":
        raise PrecisionError(f"{what}={precision}: mixed precision is not offered on mps; use 32")
    return name


def autocast(name, device):
    """The autocast context of the Fabric precision ``name`` on ``device`` (none for 32)."""
    if name == "32-true":
        return contextlib.nullcontext()
    return torch.autocast(device_type(device), dtype=DTYPES[name])
