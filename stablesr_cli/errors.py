"""Exceptions with messages written for people: what happened, to which file, what to do.

This module imports nothing heavy so the CLI can catch these without importing torch.
"""

from __future__ import annotations


class StableSRError(Exception):
    """Base class of every expected failure; the CLI prints its message as one line."""


class InputImageError(StableSRError):
    """An input image cannot be read (missing, corrupt, truncated, too large, not an image)."""


class OutputPathError(StableSRError):
    """An output cannot be written (unwritable folder, would overwrite an input, exists)."""


class WeightsNotFoundError(StableSRError):
    """A model's weights are not on this machine and may not be downloaded."""


class ChecksumError(StableSRError):
    """A downloaded or local weights file does not match the manifest's SHA-256."""


class UnsafeCheckpointError(StableSRError):
    """A checkpoint asks the unpickler for something that could run code."""


class CheckpointError(StableSRError):
    """A checkpoint file is unreadable: truncated, not a checkpoint, or of an unknown layout."""


class CheckpointMismatchError(CheckpointError):
    """A state dict does not fit the network: missing, unexpected or mis-shaped keys."""


class OptionError(StableSRError):
    """An option value is out of range or inconsistent with another option.

    `options` names the parameters the message speaks of, spelled as the Python API spells them
    (`tile_size`, `device`), so that API users read their own keywords; the CLI shows the same
    message with its flags (`--tile-size`) in their place.
    """

    def __init__(self, message: str, *, options: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.options = options
