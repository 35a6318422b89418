"""Which precision the network runs in: bf16 autocast where the hardware is fast at it."""
from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16", "fp32")


# --------------------------------------------------------------------------- precision
def fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bfloat16 matrix math natively (so bf16 autocast pays):
    a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(f is not None and f() for f in checks)
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` where the hardware has fast bf16 (``fast_bf16``), else ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision
