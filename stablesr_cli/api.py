"""The one object the CLI and Python users hold: load the models once, upscale many images.

    from stablesr_cli import Upscaler, UpscaleOptions
    upscaler = Upscaler.from_pretrained("turbo")
    image_sr = upscaler.upscale(Image.open("photo.png"), UpscaleOptions(scale=4, w=0.5))
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError, WeightsNotFoundError
from .options import UpscaleOptions, resolved_steps
from .progress import ProgressEvent
from .runtime import resolve_device, resolve_dtype

ProgressCallback = Callable[[ProgressEvent], None]
_NEEDED = ("unet", "time_encoder", "vae", "cfw", "context_empty")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    prediction: str = "eps"
    native_tile: int = 64
    """Native latent tile side: 64 for the 512-family models, 96 for 768v."""
    default_steps: int = 200
    default_w: float = 0.5

    @classmethod
    def from_spec(cls, spec) -> "ModelInfo":
        """From the weights manifest's `store.ModelSpec`."""
        return cls(spec.name, spec.prediction, spec.tile_latent, spec.default_steps, spec.default_w)


class Upscaler:
    def __init__(self, models, info: ModelInfo) -> None:
        self.models = models
        self.spec = info

    @property
    def device(self) -> torch.device:
        return self.models.device

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = "turbo",
        *,
        device: str = "auto",
        dtype: str = "auto",
        offline: bool | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> "Upscaler":
        """A manifest name (turbo, v2-512, v2-768v, face), an official .ckpt, or a folder of converted files.

        Missing weights are downloaded and converted on first use (unless offline), with what is
        fetched reported through `on_event`.
        """
        path = Path(os.fspath(model)).expanduser()
        if path.is_dir():
            from .checkpoints.convert import find_converted

            components = find_converted(path)
            if all(name in components for name in _NEEDED):
                return cls.from_components(components, device=device, dtype=dtype)
        from .store import ensure_model

        def note(event) -> None:  # the store reports WeightsEvent objects; callers get their text
            if on_event is not None and getattr(event, "kind", "") != "progress":
                on_event(getattr(event, "message", str(event)))

        resolved = ensure_model(os.fspath(model), offline=bool(offline), on_event=note)
        return cls.from_components(resolved.components, device=device, dtype=dtype, info=ModelInfo.from_spec(resolved.spec))

    @classmethod
    def from_components(
        cls,
        components: dict[str, Path],
        *,
        device: str = "auto",
        dtype: str = "auto",
        info: ModelInfo | None = None,
    ) -> "Upscaler":
        """Load converted component files (as written by `stablesr weights convert`):
        unet, time_encoder, vae, cfw and context_empty, each a safetensors file."""
        from .checkpoints.assemble import build_autoencoder, build_time_encoder, build_unet
        from .checkpoints.io import read_safetensors
        from .pipeline.schedule import Prediction
        from .pipeline.upscale import StableSRModels

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        missing = [name for name in _NEEDED if name not in components]
        if missing:
            raise WeightsNotFoundError(
                f"converted model is missing {', '.join(missing)} "
                "(create it with `stablesr weights convert CKPT --cfw CFW_CKPT -o DIR`)"
            )
        loaded = {name: read_safetensors(components[name]) for name in _NEEDED}
        unet_meta = loaded["unet"][1]
        if info is None:  # a folder given by path: what the shapes cannot tell comes from metadata
            info = _info_from_manifest(unet_meta.get("model"))
        if info is None:
            info = ModelInfo(
                name=unet_meta.get("model") or Path(components["unet"]).parent.name,
                prediction=unet_meta.get("prediction") or "eps",
                native_tile=int(unet_meta.get("native_tile", 64)),
                default_steps=int(unet_meta.get("default_steps", 200)),
                default_w=float(unet_meta.get("default_w", 0.5)),
            )
        place = {"device": torch_device, "dtype": torch_dtype}
        unet = build_unet(loaded["unet"][0], num_head_channels=int(unet_meta.get("num_head_channels", 64)), **place)
        time_meta = loaded["time_encoder"][1]
        time_encoder = build_time_encoder(loaded["time_encoder"][0], num_heads=int(time_meta.get("num_heads", 4)), **place)
        sd_vae = build_autoencoder(loaded["vae"][0], "VAE", **place)
        cfw_vae = build_autoencoder(loaded["cfw"][0], "CFW autoencoder", **place)
        if _same_encoder(sd_vae, cfw_vae):
            sd_vae = cfw_vae
        context_sd = loaded["context_empty"][0]
        if len(context_sd) != 1:
            raise CheckpointError(f"{components['context_empty']}: expected one tensor, found {len(context_sd)}")
        context = next(iter(context_sd.values())).to(torch_device)
        models = StableSRModels(
            unet=unet,
            time_encoder=time_encoder,
            sd_vae=sd_vae,
            cfw_vae=cfw_vae,
            context=context,
            prediction=Prediction(info.prediction),
            native_tile=info.native_tile,
            prompts=_prompt_encoder(context, components.get("text_encoder"), place),
        )
        return cls(models, info)

    def resolve_options(self, options: UpscaleOptions | None = None, **overrides) -> UpscaleOptions:
        options = options or UpscaleOptions(w=self.spec.default_w)
        if overrides:
            options = dataclasses.replace(options, **overrides)
        if options.steps is None:
            options = dataclasses.replace(options, steps=resolved_steps(options, self.spec.default_steps))
        return options

    def upscale_tensor(
        self, img_lq: torch.Tensor, options: UpscaleOptions | None = None, progress: ProgressCallback | None = None
    ) -> torch.Tensor:
        """[1, 3, H, W] in [0, 1] -> [1, 3, int(H*scale), int(W*scale)] in [0, 1] (CPU float32)."""
        from .pipeline.noise import SeededNoise
        from .pipeline.upscale import upscale_tensor

        opts = self.resolve_options(options)
        return upscale_tensor(img_lq, self.models, opts, SeededNoise(opts.seed), progress)

    def upscale(self, image, options: UpscaleOptions | None = None, progress: ProgressCallback | None = None, **overrides):
        """PIL image in, PIL RGB image out (8-bit, quantised by truncation as upstream)."""
        import numpy as np
        from PIL import Image

        from .pipeline.preprocess import to_uint8

        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        img = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        out = self.upscale_tensor(img, self.resolve_options(options, **overrides), progress)
        return Image.fromarray(to_uint8(out[0]).permute(1, 2, 0).numpy(), "RGB")


def _prompt_encoder(context: torch.Tensor, text_encoder_file: Path | None, place: dict):
    """Prompts other than the empty one go through the text tower, read from its file on first use."""
    from .pipeline.prompts import PromptEncoder

    if text_encoder_file is None:
        return PromptEncoder(context, None)

    def load() -> torch.nn.Module:
        from .checkpoints.assemble import build_text_encoder
        from .checkpoints.io import read_safetensors

        sd, meta = read_safetensors(text_encoder_file)
        heads = int(meta["heads"]) if meta.get("heads") else None
        return build_text_encoder(sd, heads=heads, **place)

    return PromptEncoder(context, load)


def prompt_token_count(prompt: str) -> int:
    """Tokens of a prompt with its start and end tokens; the text encoder reads 77, the rest is cut
    (as upstream). Needs the `prompts` extra (MissingExtraError otherwise)."""
    from .pipeline.prompts import token_count

    return token_count(prompt)


def _same_encoder(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two autoencoders encode identically: same encoder and quant_conv tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if k.startswith(("encoder.", "quant_conv."))]
    return all(k in sb and sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in keys)


def _info_from_manifest(name: str | None) -> ModelInfo | None:
    """The manifest's settings for a converted folder whose metadata names an official model."""
    if not name:
        return None
    from .store import load_manifest

    spec = load_manifest().models.get(name)
    return None if spec is None else ModelInfo.from_spec(spec)


def tqdm_progress(desc: str = "stablesr") -> ProgressCallback:
    """A ready-made progress callback for Python users: one tqdm bar over the sampling steps
    (`tqdm.auto`, so it renders in notebooks and terminals). The CLI draws its own with Rich."""
    from tqdm.auto import tqdm

    bar = None

    def report(event: ProgressEvent) -> None:
        nonlocal bar
        if event.stage != "sample" or not event.total_steps:
            return
        if bar is None or bar.total != event.total_steps or event.step < bar.n:
            if bar is not None:
                bar.close()
            bar = tqdm(total=event.total_steps, desc=desc, unit="step")
        bar.update(event.step - bar.n)
        if event.tile and event.total_tiles:
            bar.set_postfix_str(f"tile {event.tile}/{event.total_tiles}")
        if event.step == event.total_steps and not event.total_tiles:
            bar.close()

    return report
