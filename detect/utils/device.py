"""Choosing the device a run asks for, with a clear error when it is not there."""
from __future__ import annotations

from typing import Optional

import torch

from detect.errors import DeviceError


def resolve_device(name: Optional[str]) -> torch.device:
    """``auto`` (or None): CUDA when available, else CPU; otherwise the named device, checked."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device={name!r} is not a device name (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device={name!r} but CUDA is not available here (use device=cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device={name!r} but this machine has {torch.cuda.device_count()} GPU(s)")
    return device
