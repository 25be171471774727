"""Prompt text -> cross-attention context, with the OpenCLIP text tower loaded only when needed.

The converted model carries the empty prompt's context, which is all the default path uses. Any
other prompt is tokenized (open_clip's rules, models/tokenizer.py) and run through the text tower,
which is loaded on the first such prompt; each distinct prompt is encoded once and kept. A prompt
that tokenizes exactly like the empty one (e.g. only spaces) gets the stored context.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from ..errors import MissingExtraError, OptionError, PromptTruncatedWarning
from ..models.tokenizer import CONTEXT_LENGTH, END_OF_TEXT, START_OF_TEXT, default_tokenizer, frame_ids

PROMPTS_EXTRA = "prompts"


def require_tokenizer() -> None:
    """Fail with one line naming the extra when the tokenizer's optional dependencies are missing."""
    try:
        import ftfy  # noqa: F401
        import regex  # noqa: F401
    except ImportError as error:
        raise MissingExtraError(
            f"prompts need the optional packages ftfy and regex ({error.name or 'one of them'} is missing); "
            f"install them with: pip install 'stablesr[{PROMPTS_EXTRA}]'"
        ) from None


def token_count(prompt: str) -> int:
    """Tokens of the prompt including the start and end tokens, before the cut to CONTEXT_LENGTH."""
    require_tokenizer()
    return len(default_tokenizer().encode(prompt)) + 2


class PromptEncoder:
    """Encodes prompts to contexts [1, 77, width] on demand; see the module docstring."""

    def __init__(self, empty_context: torch.Tensor, load_text_encoder: Callable[[], nn.Module] | None) -> None:
        self.empty_context = empty_context
        self._load = load_text_encoder
        self._text_encoder: nn.Module | None = None
        self._contexts: dict[str, torch.Tensor] = {"": empty_context}

    def encode(self, prompt: str) -> torch.Tensor:
        if prompt in self._contexts:
            return self._contexts[prompt]
        require_tokenizer()
        ids = default_tokenizer().encode(prompt)
        row = frame_ids(ids)
        if row[:2] == [START_OF_TEXT, END_OF_TEXT]:  # nothing left after cleaning: the empty prompt
            context = self.empty_context
        else:
            context = self._run_text_encoder(row)
        if len(ids) + 2 > CONTEXT_LENGTH:
            warnings.warn(
                f"prompt {prompt[:40]!r}... is {len(ids) + 2} tokens long; the text encoder reads the first "
                f"{CONTEXT_LENGTH}, the rest is ignored",
                PromptTruncatedWarning,
                stacklevel=2,
            )
        self._contexts[prompt] = context
        return context

    def _run_text_encoder(self, row: list[int]) -> torch.Tensor:
        if self._text_encoder is None:
            if self._load is None:
                raise OptionError("this model has no text encoder, so it can only use the empty prompt")
            self._text_encoder = self._load()
        param = next(self._text_encoder.parameters())
        tokens = torch.tensor([row], dtype=torch.long, device=param.device)
        with torch.no_grad():
            return self._text_encoder(tokens).to(self.empty_context.device)
