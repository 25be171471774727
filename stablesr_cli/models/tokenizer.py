"""Prompt text -> token ids, exactly as `open_clip.tokenize` (open_clip_torch 2.0.2) does it.

The rules (open_clip `tokenize`, golden README `08_text_encoder`): clean the text (ftfy, HTML entities, whitespace,
lower case), split it with CLIP's pre-tokenizer pattern, map every UTF-8 byte to a printable character,
merge with the byte-pair ranks of `bpe_simple_vocab_16e6.txt.gz`, then frame the ids as
`[START_OF_TEXT] + ids + [END_OF_TEXT]`, zero-padded (or cut) to the context length.

`ftfy` and `regex` are imported on first use only: the default upscale path feeds the precomputed
empty prompt (`text_encoder.empty_prompt_tokens`) and never needs this module's dependencies.
Both are required for parity: `ftfy.fix_text` is what turns curly quotes, full-width forms and
mojibake into the text CLIP was trained on, and the pattern uses `\\p{L}` / `\\p{N}`, which the
standard `re` module cannot express.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import ChecksumError

START_OF_TEXT = 49406
END_OF_TEXT = 49407
PADDING = 0  # also the id of "!" in the vocabulary; upstream pads with it anyway
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

_SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
_END_OF_WORD = "</w>"
# The file holds more merges than CLIP uses: the vocabulary is 256 byte symbols, their 256
# end-of-word twins, the merges, and the 2 special tokens, 49408 in all.
_MERGES_USED = VOCAB_SIZE - 2 * 256 - len(_SPECIAL_TOKENS)
# CLIP's pre-tokenizer; the special tokens come first so that their literal text maps to their ids.
_PIECE_PATTERN = (
    "|".join(_SPECIAL_TOKENS)
    + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


@functools.cache
def byte_alphabet() -> tuple[str, ...]:
    """The printable character standing for each byte value (index = byte).

    Bytes that are printable Latin-1 characters stand for themselves; the 68 others (controls, space,
    soft hyphen, ...) are given the code points 256, 257, ... in byte order, so no BPE symbol is
    whitespace or a control character.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1))
    printable |= set(range(ord("®"), ord("ÿ") + 1))
    alphabet: list[str] = []
    next_spare = 256
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(next_spare))
            next_spare += 1
    return tuple(alphabet)


@functools.cache
def _regex() -> Any:
    import regex  # lazy: see the module docstring

    return regex


@functools.cache
def _piece_pattern() -> Any:
    return _regex().compile(_PIECE_PATTERN, _regex().IGNORECASE)


def clean_text(text: str) -> str:
    """open_clip's `whitespace_clean(basic_clean(text)).lower()`."""
    import ftfy  # lazy: see the module docstring

    text = ftfy.fix_text(text)
    # twice, so doubly escaped entities such as "&amp;amp;" also come out as "&"
    text = html.unescape(html.unescape(text)).strip()
    return _regex().sub(r"\s+", " ", text).strip().lower()


class BpeTokenizer:
    """Byte-pair encoder over CLIP's merge ranks. Build with `from_file` or `default_tokenizer()`."""

    def __init__(self, merges: Sequence[tuple[str, str]]) -> None:
        if len(merges) != _MERGES_USED:
            raise ValueError(f"CLIP's vocabulary needs {_MERGES_USED} merges, got {len(merges)}")
        # single symbols are numbered in code-point order: the printable bytes first, then the spares
        alphabet = sorted(byte_alphabet())
        symbols = [*alphabet, *(c + _END_OF_WORD for c in alphabet), *(a + b for a, b in merges), *_SPECIAL_TOKENS]
        self.ids: dict[str, int] = {symbol: i for i, symbol in enumerate(symbols)}
        self.merge_ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}
        # keep the constants honest: they are what the framing and the text encoder rely on
        if len(self.ids) != VOCAB_SIZE or self.ids[_SPECIAL_TOKENS[0]] != START_OF_TEXT or self.ids[
            _SPECIAL_TOKENS[1]
        ] != END_OF_TEXT:
            raise ValueError("the merges do not give CLIP's 49408-entry vocabulary")
        self._byte_pairs = functools.lru_cache(maxsize=1 << 16)(self._merge_word)

    @classmethod
    def from_file(cls, path: Path, *, expected_sha256: str | None = BPE_SHA256) -> "BpeTokenizer":
        """Read a gzipped merges file (first line a version header, then one `left right` pair a line)."""
        data = path.read_bytes()
        if expected_sha256 is not None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected_sha256:
                raise ChecksumError(
                    f"{path}: SHA-256 {actual} does not match the CLIP vocabulary ({expected_sha256}); "
                    "reinstall the package"
                )
        lines = gzip.decompress(data).decode("utf-8").split("\n")
        merges: list[tuple[str, str]] = []
        for line in lines[1 : 1 + _MERGES_USED]:
            left, right = line.split()
            merges.append((left, right))
        return cls(merges)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` after cleaning, without the start/end framing."""
        ids: list[int] = []
        alphabet = byte_alphabet()
        for piece in _piece_pattern().findall(clean_text(text)):
            if piece in _SPECIAL_TOKENS:
                ids.append(self.ids[piece])
                continue
            word = "".join(alphabet[b] for b in piece.encode("utf-8"))
            ids.extend(self.ids[symbol] for symbol in self._byte_pairs(word))
        return ids

    def _merge_word(self, word: str) -> tuple[str, ...]:
        """Apply merges to one pre-tokenized word, lowest rank first, until none applies."""
        symbols = [*word[:-1], word[-1] + _END_OF_WORD]
        unranked = len(self.merge_ranks)
        while len(symbols) > 1:
            ranks = [self.merge_ranks.get(pair, unranked) for pair in zip(symbols, symbols[1:])]
            best = min(ranks)
            if best == unranked:
                break
            first, second = symbols[ranks.index(best)], symbols[ranks.index(best) + 1]
            # merge every occurrence of the pair, scanning left to right without overlaps
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)


@functools.cache
def default_tokenizer() -> BpeTokenizer:
    """The tokenizer over the vocabulary shipped in `stablesr_cli/data/` (read once)."""
    resource = resources.files("stablesr_cli") / "data" / BPE_FILE_NAME
    with resources.as_file(resource) as path:
        return BpeTokenizer.from_file(Path(path))


def frame_ids(ids: Sequence[int], context_length: int = CONTEXT_LENGTH) -> list[int]:
    """`[START] + ids + [END]`, zero-padded to `context_length`; a longer row is cut and ends in END."""
    if context_length < 2:
        raise ValueError(f"context_length must leave room for the start and end tokens, got {context_length}")
    row = [START_OF_TEXT, *ids, END_OF_TEXT]
    if len(row) > context_length:
        row = row[:context_length]
        row[-1] = END_OF_TEXT
    return row + [PADDING] * (context_length - len(row))


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """LongTensor [len(texts), context_length] of token ids, as `open_clip.tokenize(texts)`."""
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = default_tokenizer()
    rows = [frame_ids(tokenizer.encode(text), context_length) for text in texts]
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), context_length)
