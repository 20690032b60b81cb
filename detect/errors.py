"""The errors a user's input can cause, at the bottom of the package so every layer (and the
command-line helpers) can raise or catch them without importing the layer that owns the input.

Each is re-exported where it is raised (``detect.config.ConfigError``, ``detect.data.DatasetError``,
...). The tools print their message as one line, ``error: ...``, and exit with status 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union


class ConfigError(ValueError):
    """A configuration that cannot be used: unknown key, wrong type, unreadable file."""


class DatasetError(ValueError):
    """A dataset that cannot be used as given (missing files, empty split, unknown category...)."""


class ImageReadError(OSError):
    """An image file that cannot be used: missing, unreadable, truncated or not an image."""

    def __init__(self, path: Union[str, Path], reason: str = ""):
        # reason may be empty when a DataLoader worker re-raises the error from its message alone
        super().__init__(f"{path}: {reason}" if reason else str(path))
        self.path = str(path)
        self.reason = reason


class ProposalError(ValueError):
    """A proposals file is missing, malformed, made with other settings, or lacks an image."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, another format, or another model."""


class DeviceError(ValueError):
    """A device that does not exist on this machine (e.g. cuda without a GPU)."""


class OutputExistsError(ValueError):
    """An output folder that already holds what another command (or an earlier run) made."""


USER_ERRORS = (ConfigError, DatasetError, ImageReadError, CheckpointError, DeviceError, ProposalError,
               OutputExistsError, FileNotFoundError)
