"""Official checkpoints -> one .safetensors file per component, plus the precomputed empty-prompt context.

Converted files keep upstream key names with the component prefix stripped (`unet.safetensors`
holds `input_blocks.0.0.weight`, not `model.diffusion_model.input_blocks.0.0.weight`), so they load
through the same key map as the `.ckpt`, only faster and memory-mapped. Every file records where it
came from in its metadata (see `FORMAT`). Optimizer state, the stored diffusion schedule and the
CFW training loss are dropped; an EMA copy of the UNet is kept only on request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ..atomic import atomic_write_via_path
from ..errors import CheckpointError, OutputPathError
from ..hashing import require_regular_file, sha256_file
from .io import read_state_dict_mapped
from .keymap import IGNORED_PREFIXES, SCHEDULE_BUFFERS, split_components
from .stream_safetensors import write_streamed
from .layout import COMPONENT_FILES, CONTEXT_TENSOR, FORMAT, SR_COMPONENTS, find_converted  # noqa: F401  (re-exported)

StateDict = dict[str, torch.Tensor]
Note = Callable[[str], None]
"""Receives one human-readable line per conversion step (the CLI shows it; the library never prints)."""

# The CFW checkpoint (AutoencoderKLResi) is rooted at these prefixes; `loss.*` is training only.
CFW_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
_EMA_PREFIX = "model_ema."
_EMA_BOOKKEEPING = frozenset({"model_ema.decay", "model_ema.num_updates"})
_SHOW = 5


def _list_keys(keys: list[str]) -> str:
    more = f" ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _ema_to_unet_keys(sd: Mapping[str, torch.Tensor], unet_keys: list[str], source: Path) -> StateDict:
    """LitEma stores `model.diffusion_model.x.y` as `model_ema.diffusion_modelxy` (dots removed):
    recover the upstream UNet names by matching against the UNet's own keys."""
    by_flat = {("diffusion_model." + k).replace(".", ""): k for k in unet_keys}
    ema: StateDict = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if not key.startswith(_EMA_PREFIX) or key in _EMA_BOOKKEEPING:
            continue
        name = by_flat.get(key[len(_EMA_PREFIX):])
        if name is None:
            unknown.append(key)
        else:
            ema[name] = value
    if unknown:
        raise CheckpointError(f"{source}: EMA keys that match no UNet weight: {_list_keys(unknown)}")
    return ema


def split_sr_state_dict(sd: Mapping[str, torch.Tensor], source: Path, *, keep_ema: bool = False) -> dict[str, StateDict]:
    """The components of a StableSR diffusion checkpoint, prefixes stripped; `unet_ema` if asked and present."""
    components, leftover = split_components(sd)
    if "unet" not in components:
        if any(k.startswith("decoder.fusion_layer_") for k in sd):
            raise CheckpointError(f"{source}: this is a CFW autoencoder checkpoint, not a diffusion model; pass it with --cfw")
        raise CheckpointError(f"{source}: no 'model.diffusion_model.*' weights; not a StableSR diffusion checkpoint")
    if leftover:
        raise CheckpointError(
            f"{source}: {len(leftover)} keys belong to no known component ({_list_keys(sorted(leftover))}); "
            "not an official StableSR checkpoint?"
        )
    missing = [name for name in SR_COMPONENTS if name not in components]
    if missing:
        raise CheckpointError(f"{source}: no weights for {', '.join(missing)}; the checkpoint is incomplete")
    if keep_ema:
        ema = _ema_to_unet_keys(sd, list(components["unet"]), source)
        if ema:
            components["unet_ema"] = ema
    return components


def split_cfw_state_dict(sd: Mapping[str, torch.Tensor], source: Path) -> StateDict:
    """The autoencoder + CFW weights of a CFW checkpoint; the training loss (`loss.*`) is dropped."""
    kept: StateDict = {}
    leftover: list[str] = []
    for key, value in sd.items():
        if key.startswith(CFW_PREFIXES):
            kept[key] = value
        elif not (key.startswith(IGNORED_PREFIXES) or key in SCHEDULE_BUFFERS):
            leftover.append(key)
    if any(k.startswith("model.diffusion_model.") for k in leftover):
        raise CheckpointError(f"{source}: this is a diffusion model checkpoint, not a CFW autoencoder; pass it as CKPT, not --cfw")
    if leftover:
        raise CheckpointError(f"{source}: {len(leftover)} keys are not CFW autoencoder weights ({_list_keys(sorted(leftover))})")
    if not any(k.startswith("decoder.fusion_layer_") for k in kept):
        raise CheckpointError(f"{source}: no 'decoder.fusion_layer_*' weights; not a CFW checkpoint")
    return kept


def _target_dtype(t: torch.Tensor, fp16: bool) -> torch.dtype:
    return torch.float16 if fp16 and t.is_floating_point() else t.dtype


def _standalone(t: torch.Tensor, fp16: bool) -> torch.Tensor:
    """A dense tensor holding exactly what is written for `t`, optionally half precision."""
    if _target_dtype(t, fp16) != t.dtype:
        return t.to(torch.float16).contiguous()
    return t.contiguous()


def _write_component(
    sources: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str], fp16: bool, release: Callable[[], None]
) -> None:
    """One component file, written tensor by tensor from the memory-mapped checkpoint; `release`
    drops the checkpoint pages read so far, so resident memory stays at a few hundred MB of them."""
    atomic_write_via_path(
        path,
        lambda temporary: write_streamed(
            temporary, sources, lambda t: _standalone(t, fp16), lambda t: _target_dtype(t, fp16), metadata,
            after_bytes=release,
        ),  # fmt: skip
        what="converted weights",
    )


def _write_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    from safetensors.torch import save_file

    atomic_write_via_path(
        path, lambda temporary: save_file(dict(tensors), str(temporary), metadata=dict(metadata)), what="converted weights"
    )


def _dtype_names(sources: Mapping[str, torch.Tensor], fp16: bool) -> str:
    return ",".join(sorted({str(_target_dtype(t, fp16)).removeprefix("torch.") for t in sources.values()}))


def _metadata(component: str, source: Path, source_sha256: str, *, model: str | None, prediction: str | None, dtype: str) -> dict[str, str]:
    meta = {
        "format": FORMAT,
        "component": component,
        "source": source.name,
        "source_sha256": source_sha256,
        "dtype": dtype,
    }
    if model:
        meta["model"] = model
    if prediction:
        meta["prediction"] = prediction
    return meta


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from None


def _noop(_: str) -> None:
    pass


def convert_sr_checkpoint(
    ckpt: str | Path,
    out_dir: str | Path,
    *,
    fp16: bool = False,
    keep_ema: bool = False,
    model: str | None = None,
    prediction: str | None = None,
    source_sha256: str | None = None,
    text_heads: int | None = None,
    unet_head_channels: int | None = None,
    note: Note | None = None,
) -> dict[str, Path]:
    """Split a StableSR diffusion `.ckpt` into unet / time_encoder / vae / text_encoder files plus
    `context_empty.safetensors`; returns component -> written path.

    `model`/`prediction` ('eps' or 'v') are recorded in the metadata when known; `text_heads` is only
    needed for text towers whose width is not a multiple of 64 (open_clip's head width), i.e. test models.
    """
    from .assemble import empty_prompt_context  # needs the text model code; imported on use

    ckpt, out_dir, note = Path(ckpt), Path(out_dir), note or _noop
    require_regular_file(ckpt)
    if source_sha256 is None:
        note(f"hashing {ckpt.name}")
        source_sha256 = sha256_file(ckpt)
    note(f"reading {ckpt.name}")
    state_dict, release = read_state_dict_mapped(ckpt)
    components = split_sr_state_dict(state_dict, ckpt, keep_ema=keep_ema)
    _prepare_out_dir(out_dir)

    # the context is computed in float32 from the stored weights, before any fp16 cast
    note("computing the empty-prompt context")
    context = empty_prompt_context(components["text_encoder"], **({"heads": text_heads} if text_heads else {}))
    release()
    written: dict[str, Path] = {}
    for name, sd in components.items():
        path = out_dir / COMPONENT_FILES[name]
        note(f"writing {path.name} ({len(sd)} tensors)")
        meta = _metadata(name, ckpt, source_sha256, model=model, prediction=prediction, dtype=_dtype_names(sd, fp16))
        # What no tensor shape reveals is recorded where the loader looks for it; the SD 2.x
        # defaults (64-wide UNet heads, width // 64 text heads) apply when nothing is recorded.
        if name == "unet" and unet_head_channels:
            meta["num_head_channels"] = str(unet_head_channels)
        if name == "text_encoder" and text_heads:
            meta["heads"] = str(text_heads)
        _write_component(sd, path, meta, fp16, release)
        written[name] = path
    path = out_dir / COMPONENT_FILES["context_empty"]
    _write_safetensors(
        {CONTEXT_TENSOR: context.detach().to(torch.float32).contiguous()},
        path,
        _metadata("context_empty", ckpt, source_sha256, model=model, prediction=prediction, dtype="float32"),
    )
    written["context_empty"] = path
    return written


def convert_cfw_checkpoint(
    ckpt: str | Path,
    out_dir: str | Path,
    *,
    fp16: bool = False,
    model: str | None = None,
    source_sha256: str | None = None,
    note: Note | None = None,
) -> Path:
    """Write `cfw.safetensors` (encoder, decoder incl. fusion layers, quant convs) from a CFW `.ckpt`."""
    ckpt, out_dir, note = Path(ckpt), Path(out_dir), note or _noop
    require_regular_file(ckpt)
    if source_sha256 is None:
        note(f"hashing {ckpt.name}")
        source_sha256 = sha256_file(ckpt)
    note(f"reading {ckpt.name}")
    state_dict, release = read_state_dict_mapped(ckpt)
    sd = split_cfw_state_dict(state_dict, ckpt)
    _prepare_out_dir(out_dir)
    path = out_dir / COMPONENT_FILES["cfw"]
    note(f"writing {path.name} ({len(sd)} tensors)")
    meta = _metadata("cfw", ckpt, source_sha256, model=model, prediction=None, dtype=_dtype_names(sd, fp16))
    _write_component(sd, path, meta, fp16, release)
    return path
