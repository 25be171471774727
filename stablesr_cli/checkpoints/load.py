"""Converted component files -> ready networks and the facts that describe them.

This is the load boundary: every value read from a file (tensors, metadata) is checked here, with
one-line errors naming the file. Headers and metadata are checked before any network is built;
tensors are read one at a time while their network is filled (see `assemble`), each checked to be
finite as it is read, so the peak memory of a load is the finished networks plus one tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, WeightsNotFoundError
from ..model_facts import ModelFacts, facts_from_metadata
from ..pipeline.prompts import PromptEncoder
from ..pipeline.schedule import Prediction
from ..pipeline.upscale import StableSRModels
from .assemble import WeightSource, build_autoencoder, build_text_encoder, build_time_encoder, build_unet, stored_names
from .detect_autoencoder import infer_autoencoder_config, split_autoencoder
from .io import ensure_finite, read_safetensors
from .layout import COMPONENT_FILES, REQUIRED_COMPONENTS
from .safetensors_reader import SafetensorsReader

_NETWORKS = ("unet", "time_encoder", "vae", "cfw")


def load_models(
    components: Mapping[str, Path],
    *,
    device: torch.device,
    dtype: torch.dtype,
    base: ModelFacts | None = None,
    manifest_facts: Mapping[str, ModelFacts] | None = None,
) -> tuple[StableSRModels, ModelFacts]:
    """Build the networks of one model from its converted files, and tell its facts.

    The facts are what the files' metadata records, on top of `base` (the manifest's facts of a
    released model) or, without it, of the manifest's facts of the model the metadata names
    (`manifest_facts`, name -> facts); SD 2.x defaults fill in the rest.
    """
    missing = [name for name in REQUIRED_COMPONENTS if name not in components]
    if missing:
        where = Path(next(iter(components.values()))).parent if components else None
        files = ", ".join(COMPONENT_FILES[name] for name in missing)
        place = f"{where}: " if where else ""
        raise WeightsNotFoundError(
            f"{place}missing {files}; create the folder with `stablesr weights convert CKPT --cfw CFW_CKPT -o DIR`"
        )
    with ExitStack() as files:
        # every header is checked before the first network is filled: a damaged CFW file fails at once
        readers = {name: files.enter_context(SafetensorsReader(components[name])) for name in _NETWORKS}
        context_tensors, _ = read_safetensors(components["context_empty"])
        unet_meta = readers["unet"].metadata
        facts = facts_from_metadata(
            str(components["unet"]), unet_meta, readers["time_encoder"].metadata,
            time_encoder_source=str(components["time_encoder"]),
            base=base or (manifest_facts or {}).get(unet_meta.get("model", "")),
            fallback_name=Path(components["unet"]).parent.name,
        )  # fmt: skip
        place = {"device": device, "dtype": dtype}
        weights = {name: file_weights(reader) for name, reader in readers.items()}
        unet = _built(
            components["unet"], lambda: build_unet(weights["unet"], num_head_channels=facts.unet_head_channels, **place)
        )
        context = _context(components["context_empty"], context_tensors, unet.config.context_dim)
        time_encoder = _built(
            components["time_encoder"],
            lambda: build_time_encoder(weights["time_encoder"], num_heads=facts.time_encoder_heads, **place),
        )
        cfw_vae = _built(components["cfw"], lambda: build_autoencoder(weights["cfw"], "CFW autoencoder", **place))
        if _same_encoder(weights["vae"], weights["cfw"], dtype):
            # one encoder pass per image, and the SD VAE (whose decoder is never used) is not loaded;
            # its file is still checked: an autoencoder's keys and shapes, every value finite
            _built(components["vae"], lambda: infer_autoencoder_config(weights["vae"].shapes))
            _check_the_rest(weights["vae"])
            sd_vae = cfw_vae
        else:
            sd_vae = _built(components["vae"], lambda: build_autoencoder(weights["vae"], "VAE", **place))
    models = StableSRModels(
        unet=unet,
        time_encoder=time_encoder,
        sd_vae=sd_vae,
        cfw_vae=cfw_vae,
        context=context.to(device),
        prediction=Prediction(facts.prediction),
        native_tile=facts.native_tile,
        prompts=_prompt_encoder(context, components.get("text_encoder"), device=device, dtype=dtype),
    )
    return models, facts


def _prompt_encoder(context: torch.Tensor, text_encoder_file: Path | None, *, device, dtype) -> PromptEncoder:
    """Prompts other than the empty one go through the text tower, read from its file on first use:
    the default path (empty prompt, whose context was stored at conversion) never loads it."""
    if text_encoder_file is None:
        return PromptEncoder(context, None)

    def load() -> nn.Module:
        with SafetensorsReader(text_encoder_file) as reader:
            meta = reader.metadata
            heads = int(meta["heads"]) if meta.get("heads", "").isdigit() and int(meta["heads"]) > 0 else None
            return _built(
                text_encoder_file, lambda: build_text_encoder(file_weights(reader), heads=heads, device=device, dtype=dtype)
            )

    return PromptEncoder(context, load)


def file_weights(reader: SafetensorsReader) -> WeightSource:
    """The tensors of an open file as a network's weights: each read when its turn comes and refused,
    naming the file and the tensor, if it holds a NaN or an infinity."""

    def read(name: str) -> torch.Tensor:
        tensor = reader.read(name)
        ensure_finite({name: tensor}, reader.path)
        return tensor

    return WeightSource({name: stored.stand_in() for name, stored in reader.tensors.items()}, read)


def _built(path: Path, build):
    """Run a network builder, turning a configuration the file made impossible into an error naming it."""
    try:
        return build()
    except (CheckpointError, ValueError) as error:
        if str(error).startswith(f"{path}: "):  # a tensor error that names the file already
            raise
        raise CheckpointError(f"{path}: {error}") from None


def _context(path: Path, tensors: Mapping[str, torch.Tensor], width: int) -> torch.Tensor:
    """The empty prompt's context: exactly one float tensor [1, 77, width] with finite values."""
    if len(tensors) != 1:
        raise CheckpointError(f"{path}: expected one tensor, found {len(tensors)}; reconvert the checkpoint")
    context = next(iter(tensors.values()))
    if context.ndim != 3 or context.shape[0] != 1 or context.shape[1] != 77 or context.shape[2] != width:
        raise CheckpointError(
            f"{path}: context of shape {tuple(context.shape)}, expected (1, 77, {width}) for this UNet; "
            "reconvert the checkpoint"
        )
    if not context.is_floating_point() or not bool(torch.isfinite(context).all()):
        raise CheckpointError(f"{path}: context holds non-finite or non-float values; reconvert the checkpoint")
    return context


def _encoder_names(source: WeightSource) -> dict[str, str]:
    names = split_autoencoder(stored_names(source))
    return {ours: stored for ours, stored in names.items() if ours.startswith(("encoder.", "quant_conv."))}


def _same_encoder(a: WeightSource, b: WeightSource, dtype: torch.dtype) -> bool:
    """Whether two autoencoders encode identically: the same encoder and quant_conv tensors in the
    dtype they run in. Compared from the stored tensors, one pair at a time, so that the answer
    never depends on how a loaded network keeps its weights (prepacked ones leave its state dict)."""
    names_a, names_b = _encoder_names(a), _encoder_names(b)
    if names_a.keys() != names_b.keys():
        return False
    if any(a.shapes[names_a[k]].shape != b.shapes[names_b[k]].shape for k in names_a):
        return False
    return all(torch.equal(a.read(names_a[k]).to(dtype), b.read(names_b[k]).to(dtype)) for k in names_a)


def _check_the_rest(source: WeightSource) -> None:
    """Read every tensor of a file that is not loaded, one at a time, so that damage anywhere in a
    model's files is still reported (`source.read` refuses non-finite values)."""
    for name in source.shapes:
        source.read(name)
