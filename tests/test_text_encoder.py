"""OpenCLIP text tower, its config detection, and the CLIP tokenizer (numerics: golden case 08)."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from stablesr_cli.checkpoints.assemble import load_strict
from stablesr_cli.checkpoints.detect_text import infer_text_encoder_config
from stablesr_cli.errors import CheckpointError, CheckpointMismatchError
from stablesr_cli.models.text_encoder import (
    EMPTY_PROMPT_TOKENS,
    TextEncoder,
    TextEncoderConfig,
    empty_prompt_tokens,
)
from stablesr_cli.models.tokenizer import BPE_FILE_NAME, BPE_SHA256, END_OF_TEXT, START_OF_TEXT, tokenize

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
PREFIX = "cond_stage_model.model."
TINY = TextEncoderConfig(vocab_size=64, context_length=12, width=16, layers=3, heads=4, mlp_ratio=4.0, embed_dim=8)


def _meta(config: TextEncoderConfig) -> TextEncoder:
    with torch.device("meta"):
        return TextEncoder(config)


# ---------------------------------------------------------------- detection


@settings(max_examples=25, deadline=None)
@given(
    heads=st.integers(1, 4),
    head_dim=st.integers(1, 6),
    layers=st.integers(1, 4),
    hidden=st.integers(1, 50),
    vocab=st.integers(1, 100),
    context=st.integers(1, 80),
    embed_dim=st.integers(1, 30),
)
def test_detection_round_trip(heads, head_dim, layers, hidden, vocab, context, embed_dim):
    width = heads * head_dim
    config = TextEncoderConfig(
        vocab_size=vocab, context_length=context, width=width, layers=layers, heads=heads,
        mlp_ratio=hidden / width, embed_dim=embed_dim,
    )
    sd = _meta(config).state_dict()
    found = infer_text_encoder_config(sd, heads=heads)
    assert found == config
    assert found.mlp_width == hidden


def test_detection_of_a_real_tiny_module_and_default_heads():
    config = TextEncoderConfig(vocab_size=50, context_length=9, width=128, layers=2, heads=2, embed_dim=128)
    found = infer_text_encoder_config(TextEncoder(config).state_dict())
    assert found.heads == 2  # open_clip's 64-wide heads
    assert found == config


def test_detection_accepts_the_checkpoint_prefix_and_ignores_other_components():
    sd = {PREFIX + k: v for k, v in _meta(TINY).state_dict().items()}
    sd["model.diffusion_model.out.2.weight"] = torch.empty(4, 320, 3, 3, device="meta")
    sd["betas"] = torch.empty(1000, device="meta")
    assert infer_text_encoder_config(sd, heads=TINY.heads) == TINY


def test_detection_rejects_what_is_not_a_text_tower():
    sd = _meta(TINY).state_dict()
    del sd["positional_embedding"]
    with pytest.raises(CheckpointError, match="positional_embedding"):
        infer_text_encoder_config(sd, heads=4)

    sd = {k: v for k, v in _meta(TINY).state_dict().items() if not k.startswith("transformer.resblocks.1.")}
    with pytest.raises(CheckpointError, match=r"resblocks \[1\]"):
        infer_text_encoder_config(sd, heads=4)

    with pytest.raises(CheckpointError, match="pass heads"):
        infer_text_encoder_config(_meta(TINY).state_dict())  # width 16: no 64-wide heads

    with pytest.raises(CheckpointError, match="not divisible"):
        infer_text_encoder_config(_meta(TINY).state_dict(), heads=3)


# ---------------------------------------------------------------- full-size ViT-H/14 layout


def test_full_size_vit_h_matches_the_official_checkpoint_layout():
    manifest = json.loads((GOLDEN / "keys_v2-finetune_text_T_512.json").read_text())
    expected = [
        (key[len(PREFIX):], shape, dtype)
        for key, (shape, dtype) in manifest["keys"].items()
        if key.startswith("cond_stage_model.")
    ]
    assert all(key.startswith(PREFIX) for key in manifest["keys"] if key.startswith("cond_stage_model."))

    encoder = _meta(TextEncoderConfig())
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in encoder.state_dict().items()]
    assert ours == expected  # same keys, shapes, dtypes, and state_dict order
    assert sum(p.numel() for p in encoder.parameters()) == 354_032_641
    assert manifest["meta"]["numel_by_prefix"]["cond_stage_model"] == 354_032_641
    assert not list(encoder.buffers())  # nothing that would need values on the meta device

    shapes = {key: torch.empty(shape, device="meta") for key, shape, _ in expected}
    assert infer_text_encoder_config(shapes) == TextEncoderConfig()


def test_strict_loading_names_the_missing_and_the_extra_key():
    sd = TextEncoder(TINY).state_dict()
    del sd["transformer.resblocks.2.mlp.c_proj.bias"]
    sd["transformer.resblocks.2.attn.attn_mask"] = torch.zeros(12, 12)
    with pytest.raises(CheckpointMismatchError) as err:
        load_strict(_meta(TINY), sd, "text encoder")
    message = str(err.value)
    assert "1 missing: transformer.resblocks.2.mlp.c_proj.bias" in message
    assert "1 unexpected: transformer.resblocks.2.attn.attn_mask" in message


# ---------------------------------------------------------------- forward


def test_meta_build_and_strict_load_reproduce_the_source_module():
    source = TextEncoder(TINY).eval()
    rebuilt = load_strict(_meta(TINY), source.state_dict(), "text encoder").eval()
    tokens = torch.randint(0, TINY.vocab_size, (2, TINY.context_length))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(tokens), source(tokens), rtol=0, atol=0)


def _reference_forward(encoder: TextEncoder, tokens: torch.Tensor) -> torch.Tensor:
    """The same tower written with torch's own MultiheadAttention and an explicit additive mask."""
    config = encoder.config
    length = tokens.shape[1]
    mask = torch.full((length, length), float("-inf")).triu(1)
    x = encoder.token_embedding.weight[tokens] + encoder.positional_embedding[:length]
    for block in list(encoder.transformer.resblocks)[:-1]:
        mha = torch.nn.MultiheadAttention(config.width, config.heads, batch_first=True)
        mha.load_state_dict(block.attn.state_dict())
        h = torch.nn.functional.layer_norm(x, (config.width,), block.ln_1.weight, block.ln_1.bias, 1e-5)
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = torch.nn.functional.layer_norm(x, (config.width,), block.ln_2.weight, block.ln_2.bias, 1e-5)
        x = x + block.mlp.c_proj(torch.nn.functional.gelu(block.mlp.c_fc(h), approximate="none"))
    return torch.nn.functional.layer_norm(x, (config.width,), encoder.ln_final.weight, encoder.ln_final.bias, 1e-5)


def test_forward_matches_multihead_attention_with_a_causal_mask():
    encoder = TextEncoder(TINY).eval()
    for p in encoder.parameters():  # non-trivial norms and biases, so every term matters
        torch.nn.init.normal_(p, std=0.3)
    tokens = torch.randint(0, TINY.vocab_size, (3, TINY.context_length))
    with torch.no_grad():
        torch.testing.assert_close(encoder(tokens), _reference_forward(encoder, tokens), rtol=0, atol=2e-5)


def test_penultimate_ignores_the_last_block_and_positions_see_only_the_past():
    encoder = TextEncoder(TINY).eval()
    tokens = torch.randint(0, TINY.vocab_size, (1, TINY.context_length))
    with torch.no_grad():
        before = encoder(tokens)
        for p in encoder.transformer.resblocks[-1].parameters():
            p.add_(1.0)
        torch.testing.assert_close(encoder(tokens), before, rtol=0, atol=0)

        changed = tokens.clone()
        changed[0, 5:] = (changed[0, 5:] + 1) % TINY.vocab_size
        after = encoder(changed)
    torch.testing.assert_close(after[:, :5], before[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, 5:], before[:, 5:])


def test_forward_rejects_token_rows_longer_than_the_context():
    encoder = TextEncoder(TINY)
    with pytest.raises(ValueError, match="tokens must be"):
        encoder(torch.zeros(1, TINY.context_length + 1, dtype=torch.long))


# ---------------------------------------------------------------- tokenizer


def test_empty_prompt_tokens():
    expected = [49406, 49407] + [0] * 75
    assert list(EMPTY_PROMPT_TOKENS) == expected
    assert empty_prompt_tokens().tolist() == [expected]
    batch = empty_prompt_tokens(3)
    assert batch.dtype == torch.long and batch.tolist() == [expected] * 3
    assert tokenize([""]).tolist() == [expected]
    assert tokenize("   \n\t ").tolist() == [expected]


def test_truncation_keeps_76_tokens_and_ends_in_end_of_text():
    exactly = tokenize(["a " * 75])[0]  # 75 words + SOT + EOT = 77: no cut
    assert exactly[0] == START_OF_TEXT and exactly[-1] == END_OF_TEXT and (exactly[1:76] == 320).all()

    longer = tokenize(["dog " * 100])[0]
    dog = tokenize(["dog"])[0, 1]
    assert longer.shape == (77,)
    assert longer[0] == START_OF_TEXT and longer[-1] == END_OF_TEXT and (longer[1:76] == dog).all()

    short = tokenize(["a photo of a cat"], context_length=5)[0].tolist()
    assert short == [49406, 320, 1125, 539, 49407]


def test_golden_token_rows():
    # ids quoted in tests/fixtures/golden/README.md (case 08), produced by open_clip.tokenize
    rows = {
        "": [49406, 49407],
        "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
        "(masterpiece:2), (best quality:2), (realistic:2), (very clear:2)": [
            49406, 263, 12066, 281, 273, 2361, 263, 949, 3027, 281, 273, 2361,
            263, 16157, 281, 273, 2361, 263, 1070, 3143, 281, 273, 264, 49407,
        ],
        "3d, cartoon, anime, sketches, (worst quality:2), (low quality:2)": [
            49406, 274, 323, 267, 7651, 267, 6469, 267, 17622, 267, 263, 5719,
            3027, 281, 273, 2361, 263, 1042, 3027, 281, 273, 264, 49407,
        ],
    }
    got = tokenize(list(rows))
    for row, ids in zip(got.tolist(), rows.values()):
        assert row == ids + [0] * (77 - len(ids))

    with safe_open(str(GOLDEN / "08_text_encoder.safetensors"), "pt") as f:
        meta = f.metadata()
        assert torch.equal(tokenize(json.loads(meta["prompts"])), f.get_tensor("input.tokens"))
        # ftfy cleaning (curly quotes, entities, case, whitespace), the 77 boundary and truncation
        assert torch.equal(tokenize(json.loads(meta["prompts_extra"])), f.get_tensor("output.tokens_extra"))


def test_special_token_text_and_cleaning():
    assert tokenize(["<start_of_text>"])[0, :3].tolist() == [49406, 49406, 49407]
    assert torch.equal(tokenize(["A  Photo\tOF a CAT"]), tokenize(["a photo of a cat"]))
    assert torch.equal(tokenize(["a photo of a cat &amp;amp; dog"]), tokenize(["a photo of a cat & dog"]))


def test_shipped_vocabulary_is_the_one_the_goldens_used():
    data = (resources.files("stablesr_cli") / "data" / BPE_FILE_NAME).read_bytes()
    assert hashlib.sha256(data).hexdigest() == BPE_SHA256
    with safe_open(str(GOLDEN / "08_text_encoder.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["tokenizer"])["bpe_sha256"] == BPE_SHA256
    assert (resources.files("stablesr_cli") / "data" / "LICENSE-open_clip").is_file()
