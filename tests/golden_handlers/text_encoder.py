"""Golden handler: OpenCLIP text tower ("penultimate") and open_clip.tokenize (case 08_text_encoder)."""

from __future__ import annotations

import json

import torch

from golden_support import GoldenCase, handles
from stablesr_cli.checkpoints.assemble import load_strict
from stablesr_cli.checkpoints.detect_text import infer_text_encoder_config
from stablesr_cli.checkpoints.keymap import COMPONENT_PREFIXES, strip_prefix
from stablesr_cli.models.text_encoder import TextEncoder, empty_prompt_tokens
from stablesr_cli.models.tokenizer import tokenize

UPSTREAM = (
    "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder.encode (layer='penultimate'; "
    "= forward: open_clip.tokenize + encode_with_transformer), open_clip_torch 2.0.2"
)


def build_text_encoder(case: GoldenCase) -> TextEncoder:
    """The module from the case file alone: shapes from the weights, heads from the open_clip arch."""
    sd = strip_prefix(case.weights(), COMPONENT_PREFIXES["text_encoder"])
    heads = case.config["open_clip_arch"]["text_cfg"]["heads"]
    config = infer_text_encoder_config(sd, heads=heads)
    with torch.device("meta"):
        module = TextEncoder(config)
    return load_strict(module, sd, f"{case.name} text encoder").eval()


@handles(UPSTREAM)
def text_encoder(case: GoldenCase) -> dict[str, torch.Tensor]:
    encoder = build_text_encoder(case)
    produced: dict[str, torch.Tensor] = {
        "input.tokens": tokenize(case.meta_json("prompts")),
        "output.tokens_extra": tokenize(case.meta_json("prompts_extra")),
    }
    n_empty = int(json.loads(case.metadata["n_empty"])) if "n_empty" in case.metadata else None
    if n_empty is None:
        n_empty = case.tensors["output.context_empty"].shape[0]
    with torch.no_grad():
        # the model runs on the case's own token ids, so a tokenizer bug cannot hide a model bug
        produced["output.context"] = encoder(case.input("tokens"))
        produced["output.context_empty"] = encoder(empty_prompt_tokens(n_empty))
    return produced
