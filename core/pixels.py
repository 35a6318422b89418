"""uint8 images <-> the [-1, 1] tensors the network sees."""
from __future__ import annotations

import numpy as np
import torch


def images_to_tensor(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) images -> float (N, 3, H, W) in [-1, 1] (a tensor passes through)."""
    if isinstance(images, torch.Tensor):
        return images.to(device=device, dtype=torch.float32)
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.array(arr, copy=True)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] images (N, C, H, W) -> uint8 (N, H, W, C), clamped and rounded."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
