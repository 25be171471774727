"""The one object the CLI and Python users hold: load the models once, upscale many images.

    from stablesr_cli import Upscaler, UpscaleOptions
    upscaler = Upscaler.from_pretrained("turbo")
    image_sr = upscaler.upscale(Image.open("photo.png"), UpscaleOptions(scale=4, w=0.5))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from .model_facts import ModelFacts, resolve_options
from .options import UpscaleOptions
from .progress import ProgressEvent
from .runtime import resolve_device, resolve_dtype

ProgressCallback = Callable[[ProgressEvent], None]


class Upscaler:
    """Loaded networks plus the facts of their model; `upscale` as often as you like."""

    def __init__(self, models, facts: ModelFacts) -> None:
        self.models = models
        self.facts = facts

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
        on_weights_event: Callable | None = None,
        compile: bool = False,  # noqa: A002 - the user-facing name of the option
    ) -> "Upscaler":
        """A manifest name (turbo, v2-512, v2-768v, face), an official .ckpt, or a folder of converted files.

        Missing weights are downloaded and converted on first use (unless offline), with what is
        fetched reported through `on_event` (one line of text per step), or through
        `on_weights_event`, which receives each `store.WeightsEvent`, download byte counts included.
        `compile=True` wraps the networks in torch.compile (see `compile`).
        """
        from .store import ensure_model

        torch_device = resolve_device(device)  # device and dtype problems surface before any download
        resolve_dtype(dtype, torch_device)

        def note(event) -> None:
            if on_weights_event is not None:
                on_weights_event(event)
            elif on_event is not None and event.kind != "progress":
                on_event(event.message)

        resolved = ensure_model(os.fspath(model), offline=bool(offline), on_event=note)
        base = resolved.spec.facts if resolved.spec is not None else None
        return cls.from_components(resolved.components, device=str(torch_device), dtype=dtype, facts=base, compile=compile)

    @classmethod
    def from_components(
        cls,
        components: dict[str, Path],
        *,
        device: str = "auto",
        dtype: str = "auto",
        facts: ModelFacts | None = None,
        compile: bool = False,  # noqa: A002 - the user-facing name of the option
    ) -> "Upscaler":
        """Load converted component files (as written by `stablesr weights convert`): unet,
        time_encoder, vae, cfw and context_empty, each a safetensors file. `facts` are the manifest's
        for a released model; what the files' metadata records applies on top."""
        from .checkpoints.load import load_models
        from .store import load_manifest

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        if torch_device.type == "cuda":
            # the tiles of a run share a few shapes: let cuDNN pick the fastest kernels once per shape
            torch.backends.cudnn.benchmark = True
        manifest_facts = {name: spec.facts for name, spec in load_manifest().models.items()}
        models, facts = load_models(
            components, device=torch_device, dtype=torch_dtype, base=facts, manifest_facts=manifest_facts
        )
        upscaler = cls(models, facts)
        return upscaler.compile() if compile else upscaler

    def compile(self) -> "Upscaler":
        """Wrap UNet, time encoder and CFW decoder in torch.compile (inductor), in place; returns self.

        The first image of each size pays the compile (minutes for the full-size UNet on a CPU);
        later tiles and images of that size run the compiled code. Kernels are cached under
        `<cache>/inductor` (or $TORCHINDUCTOR_CACHE_DIR) and reused by later runs. Outputs match
        eager within float rounding, not bit for bit.
        """
        from .pipeline.compiled import compile_networks
        from .store.places import cache_dir

        if not self.models.compiled:
            self.models = compile_networks(self.models, cache_dir())
        return self

    def resolve_options(self, options: UpscaleOptions | None = None, **overrides) -> UpscaleOptions:
        from .pipeline.upscale import latent_tiling

        options = resolve_options(options, self.facts, **overrides)
        latent_tiling(self.models, options)  # refuses tilings this model cannot run (OptionError)
        return options

    def upscale_tensor(
        self, img_lq: torch.Tensor, options: UpscaleOptions | None = None, progress: ProgressCallback | None = None
    ) -> torch.Tensor:
        """[1, 3, H, W] in [0, 1] -> [1, 3, int(H*scale), int(W*scale)] in [0, 1] (CPU float32).

        On an accelerator that runs out of memory, the image is retried with cheaper settings (see
        `pipeline.memory.retry_settings`), each retry reported as a 'retry' progress event.
        """
        from .pipeline.memory import is_out_of_memory, release_cached_memory, retry_settings
        from .pipeline.noise import SeededNoise
        from .pipeline.upscale import upscale_tensor

        opts = self.resolve_options(options)
        attempts = iter(retry_settings(opts, self.facts.native_size) if self.device.type != "cpu" else ())
        while True:
            try:
                return upscale_tensor(img_lq, self.models, opts, SeededNoise(opts.seed), progress)
            except Exception as error:  # noqa: BLE001 - only out-of-memory errors are retried
                if not is_out_of_memory(error):
                    raise
                retry = next(attempts, None)
                if retry is None:
                    raise
            release_cached_memory(self.device)
            opts, change = retry
            if progress is not None:
                progress(ProgressEvent("retry", message=f"out of memory; retrying with {change}"))

    def upscale(self, image, options: UpscaleOptions | None = None, progress: ProgressCallback | None = None, **overrides):
        """A PIL image in, a PIL image of the same kind out: "L", "LA", "RGB", "RGBA", "I;16", "I" and "F"
        keep their mode ("P" with transparency becomes "RGBA", other palettes "RGB"), alpha is
        upscaled, EXIF orientation is applied, and ICC profile, EXIF and DPI are in `info`. 8-bit
        samples are quantised by truncation, as upstream. Non-finite float pixels are replaced and
        reported as an `ImageChangedWarning`."""
        from .imaging.pil_images import upscale_pil_image

        opts = self.resolve_options(options, **overrides)
        return upscale_pil_image(image, lambda img_lq: self.upscale_tensor(img_lq, opts, progress))


def prompt_token_count(prompt: str) -> int:
    """Tokens of a prompt with its start and end tokens; the text encoder reads 77, the rest is cut
    (as upstream). Needs the `prompts` extra (MissingExtraError otherwise)."""
    from .pipeline.prompts import token_count

    return token_count(prompt)


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
