"""One image's whole data path, top to bottom, on tensors (upstream `sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py`).

    img_lq [0,1] -> x [-1,1] -> enlarge by s, clamp -> reflect-pad to 32
      -> per pixel patch (or whole): z_lq = SD-VAE posterior sample -> x_T = q_sample(z_lq, 999)
         -> tiled DDPM sampling -> CFW decode with the LR image's encoder features -> colour fix
      -> blend patches -> [0,1] -> crop the padding -> shrink to int(H*scale) x int(W*scale) -> img_sr [0,1]

With the DDIM sampler the path is that of `sr_val_ddim_text_T_negativeprompt_canvas_tile.py`: the
same, except that x_T is pure noise and the chain is DDIM's (ddim.py). Prompts and guidance work
with both samplers.

Two autoencoders are involved: the LR latent comes from the diffusion checkpoint's own VAE (a
posterior SAMPLE, not the mean), while the encoder features and the final decode come from the
separate CFW checkpoint. Nothing here reads or writes files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import budget
from ..errors import OptionError
from ..models.autoencoder import LATENT_SCALE, DiagonalGaussian
from ..options import Sampler, UpscaleOptions, VaeTiling
from ..progress import ProgressEvent
from . import preprocess
from .colorfix import apply_color_fix
from .ddim import DdimSchedule, ddim_schedule, ddim_start, sample_ddim
from .memory import auto_tile_batch
from .noise import NoiseSource, to_device
from .prompts import PromptEncoder
from .sampler import Denoiser, Guidance, LatentTiling, sample
from .schedule import Prediction, Schedule, q_sample_start, respaced_schedule
from .tiling import GaussianBlender, Tile, latent_tiles, pixel_patches

Progress = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class StableSRModels:
    """Everything one upscale needs, loaded once."""

    unet: nn.Module
    time_encoder: nn.Module
    sd_vae: nn.Module
    """The diffusion checkpoint's VAE: only its encoder is used (for the LR latent). The same object
    as `cfw_vae` when both encoders hold identical weights (upstream trained CFW with the SD VAE
    frozen), which saves one encoder pass per image and the memory of a second VAE."""
    cfw_vae: nn.Module
    """The CFW autoencoder: encoder features of the LR image and the final fused decode."""
    context: torch.Tensor
    """The empty prompt's cross-attention context [1, 77, D]."""
    prediction: Prediction
    native_tile: int
    """The model's native latent tile side (64 for the 512 models, 96 for 768v)."""
    prompts: PromptEncoder | None = None
    """Encodes prompts other than the empty one; None: only the empty prompt can be used."""
    compiled: bool = False
    """The networks are wrapped in torch.compile (compiled.py): tile batches are kept one shape."""

    def context_for(self, prompt: str) -> torch.Tensor:
        """Cross-attention context of a prompt: the stored empty-prompt one for "", else the text tower's."""
        if prompt == "":
            return self.context
        if self.prompts is None:
            raise OptionError("these models were loaded without a text encoder, so only the empty prompt can be used")
        return self.prompts.encode(prompt)

    @property
    def vae_downscale(self) -> int:
        return self.cfw_vae.config.downscale

    @property
    def unet_downscale(self) -> int:
        """How many times smaller the UNet's deepest level is than its input tile."""
        return self.unet.config.downscale

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype


def latent_tiling(models: StableSRModels, opts: UpscaleOptions) -> LatentTiling:
    """The diffusion tiling the options ask for, checked against this model's networks."""
    down = models.vae_downscale
    tile = opts.tile_size // down if opts.tile_size else models.native_tile
    overlap = tile // 2 if opts.tile_overlap is None else opts.tile_overlap // down
    check_tiling(models, opts, tile, overlap)
    return LatentTiling(tile=tile, overlap=overlap, batch=opts.tile_batch or 1)


def _fitted_tiling(models: StableSRModels, denoiser: Denoiser, opts: UpscaleOptions, z_lq: torch.Tensor) -> LatentTiling:
    """The latent tiling, with `tile_batch=None` (auto) resolved against the device's free memory."""
    tiling = dataclasses.replace(latent_tiling(models, opts), pad_batch=models.compiled)
    if opts.tile_batch is not None:
        return tiling
    height, width = z_lq.shape[-2:]
    side_h, side_w = min(tiling.tile, height), min(tiling.tile, width)
    probe = torch.zeros(1, z_lq.shape[1], side_h, side_w, device=z_lq.device)
    batch = auto_tile_batch(
        lambda: denoiser.predict(probe, probe, 999), tiling.tile,
        len(latent_tiles(height, width, tiling.tile, tiling.overlap)), models.device, models.dtype, id(models.unet),
    )  # fmt: skip
    return dataclasses.replace(tiling, batch=batch)


def check_tiling(models: StableSRModels, opts: UpscaleOptions, tile: int, overlap: int) -> None:
    """Refuse tilings this model cannot run, before any work: what the options alone cannot know.

    The UNet halves a tile once per level and concatenates skips on the way back up, so a latent
    tile side must divide by 2^(levels - 1) (8 latent, 64 pixels for SD 2.x); upstream pixel
    patches smaller than a tile would get latent sides that do not.
    """
    down = models.vae_downscale
    tile_px, multiple = tile * down, down * models.unet_downscale
    named = f"tile_size {tile_px}" if opts.tile_size else f"the model's tile size ({tile_px})"
    if tile % models.unet_downscale:
        below = max(multiple, tile_px // multiple * multiple)
        raise OptionError(
            f"tile_size {tile_px} does not suit this model: its UNet halves a tile "
            f"{models.unet_downscale.bit_length() - 1} times, so tiles must be multiples of {multiple} pixels "
            f"(try {below} or {below + multiple})",
            options=("tile_size",),
        )
    if overlap >= tile:
        raise OptionError(
            f"tile_overlap ({opts.tile_overlap}) must be smaller than {named}", options=("tile_overlap", "tile_size")
        )
    if opts.vae_tiling is VaeTiling.UPSTREAM and opts.vae_tile_size < tile_px:
        raise OptionError(
            f"vae_tile_size ({opts.vae_tile_size}) must be at least {named} with vae_tiling upstream: "
            "each pixel patch holds whole diffusion tiles",
            options=("vae_tile_size", "tile_size", "vae_tiling"),
        )


def denoiser_for(models: StableSRModels, opts: UpscaleOptions) -> Denoiser:
    """The networks with the prompt's context and, when asked for, guidance against the negative prompt."""
    scale = opts.guidance_scale
    guidance = None if scale is None else Guidance(models.context_for(opts.negative_prompt or ""), scale)
    return Denoiser(models.unet, models.time_encoder, models.context_for(opts.prompt), models.prediction, guidance)


def schedule_for(opts: UpscaleOptions) -> Schedule | DdimSchedule:
    if opts.sampler is Sampler.DDIM:
        return ddim_schedule(opts.steps, opts.eta or 0.0)
    return respaced_schedule(opts.steps)


def _sample(
    denoiser: Denoiser,
    z_lq: torch.Tensor,
    schedule: Schedule | DdimSchedule,
    noise: NoiseSource,
    tiling: LatentTiling,
    progress: Progress,
) -> torch.Tensor:
    """x_T as the chosen upstream script draws it, then that script's chain."""
    if isinstance(schedule, DdimSchedule):  # pure noise, after a discarded q_sample draw
        return sample_ddim(denoiser, ddim_start(z_lq, noise), z_lq, schedule, noise, tiling, progress)
    # the DDPM canvas scripts start from q_sample(z_lq, 999) on the base schedule
    z_start = q_sample_start(z_lq, to_device(noise.draw(tuple(z_lq.shape), channels_last=True), z_lq.device))
    return sample(denoiser, z_start, z_lq, schedule, noise, tiling, progress)


def _encode(vae: nn.Module, x: torch.Tensor, opts: UpscaleOptions, storage: torch.device | None):
    """Posterior and CFW encoder features of x, whole or with the lean tiled VAE."""
    if opts.vae_tiling is VaeTiling.LEAN:
        from .vae_tiling import tiled_encode

        return tiled_encode(vae, x, opts.vae_tile_size, storage_device=storage)
    return vae.encode_with_features(x)


def _decode(vae: nn.Module, z_raw: torch.Tensor, features, opts: UpscaleOptions, storage: torch.device | None):
    if opts.vae_tiling is VaeTiling.LEAN:
        from .vae_tiling import tiled_decode

        return tiled_decode(vae, z_raw, opts.vae_tile_size, features, opts.w, storage_device=storage)
    return vae.decode(z_raw, features, opts.w)


def restore(
    x_lq: torch.Tensor,
    models: StableSRModels,
    opts: UpscaleOptions,
    denoiser: Denoiser,
    schedule: Schedule | DdimSchedule,
    noise: NoiseSource,
    progress: Progress | None = None,
    patch: int = 0,
    total_patches: int = 1,
) -> torch.Tensor:
    """One full StableSR run on an image (or pixel patch) in [-1, 1] whose sides suit the VAEs -> [-1, 1]."""
    device, dtype = models.device, models.dtype
    noise.reseed()  # every image and pixel patch starts from the seed: no result depends on the rest of the batch
    report = progress or (lambda event: None)
    report(ProgressEvent("encode", patch=patch, total_patches=total_patches))
    x = x_lq.to(device=device, dtype=dtype)
    storage = lean_storage_device(opts, device)

    # the LR latent: a posterior SAMPLE of the diffusion checkpoint's own VAE
    posterior, features = _encode(models.sd_vae, x, opts, storage)
    # the latent is small: whatever device the encoder left it on, sampling happens on the compute device
    posterior = DiagonalGaussian(posterior.mean.to(device), posterior.logvar.to(device))
    eps_posterior = to_device(noise.draw(tuple(posterior.mean.shape)), device).to(posterior.mean.dtype)
    z_lq = (posterior.sample(eps_posterior) * LATENT_SCALE).float()  # [1, 4, h, w]

    def on_event(event: ProgressEvent) -> None:
        report(ProgressEvent(event.stage, event.step, event.total_steps, event.tile, event.total_tiles,
                             patch, total_patches))

    z0 = _sample(denoiser, z_lq, schedule, noise, _fitted_tiling(models, denoiser, opts, z_lq), on_event)

    report(ProgressEvent("decode", patch=patch, total_patches=total_patches))
    if models.sd_vae is not models.cfw_vae:  # the CFW features come from the CFW checkpoint's encoder
        _, features = _encode(models.cfw_vae, x, opts, storage)
    x_sr = _decode(models.cfw_vae, (z0 / LATENT_SCALE).to(dtype), features, opts, storage)
    # lean tiling leaves the image in storage; three channels at full size are cheap to bring back
    return apply_color_fix(opts.color_fix, x_sr.to(device).float(), x_lq.to(device=device, dtype=torch.float32))


def lean_storage_device(opts: UpscaleOptions, device: torch.device) -> torch.device | None:
    """Where lean VAE tiling keeps full-resolution activations: host memory when computing on an
    accelerator (device memory then scales with the tile, not the image); None: where they are made."""
    if opts.vae_tiling is VaeTiling.LEAN and device.type != "cpu":
        return torch.device("cpu")
    return None




def check_budget(height: int, width: int, models: StableSRModels, opts: UpscaleOptions, tiling: LatentTiling) -> None:
    """Refuse, before allocating anything, an image over --max-output-pixels or beyond this machine's memory."""
    sizes = budget.work_sizes(height, width, opts, tiling.tile * models.vae_downscale)
    vae, unet = models.cfw_vae.config, models.unet.config
    shapes = budget.NetworkShapes(
        vae_level_channels=vae.level_channels, vae_feature_levels=vae.feature_levels,
        unet_level_channels=tuple(unet.model_channels * m for m in unet.channel_mult),
        unet_res_blocks=unet.num_res_blocks, latent_channels=unet.in_channels,
    )  # fmt: skip
    device = models.device
    accelerator = device.type != "cpu"
    estimate = budget.estimate_memory(
        sizes, shapes, opts, dtype_bytes=torch.finfo(models.dtype).bits // 8, accelerator=accelerator
    )
    device_limit = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    budget.check_fits(sizes, estimate, opts, host_limit=budget.machine_memory(), device_limit=device_limit)


@torch.inference_mode()
def upscale_tensor(
    img_lq: torch.Tensor,
    models: StableSRModels,
    opts: UpscaleOptions,
    noise: NoiseSource,
    progress: Progress | None = None,
) -> torch.Tensor:
    """img_lq [1, 3, H, W] in [0, 1] -> img_sr [1, 3, int(H*scale), int(W*scale)] in [0, 1]."""
    if img_lq.ndim != 4 or img_lq.shape[:2] != (1, 3):
        raise ValueError(f"expected one RGB image [1, 3, H, W], got shape {tuple(img_lq.shape)}")
    height, width = img_lq.shape[-2:]
    target_hw = (int(height * opts.scale), int(width * opts.scale))
    if min(target_hw) < 1:
        raise OptionError(
            f"a {width}x{height} image at scale {opts.scale:g} would be {target_hw[1]}x{target_hw[0]} pixels; "
            "use a larger scale",
            options=("scale",),
        )
    if opts.steps is None or opts.w is None:
        raise ValueError("options still hold model defaults (None); fill them in with model_facts.resolve_options")
    tiling = latent_tiling(models, opts)
    check_budget(height, width, models, opts, tiling)
    schedule = schedule_for(opts)
    denoiser = denoiser_for(models, opts)  # encodes the prompts before the first image's work
    min_side = tiling.tile * models.vae_downscale  # small inputs are enlarged to at least one tile
    x = img_lq.to(torch.float32) * 2.0 - 1.0
    x, _ = preprocess.prepare_input(x, opts.scale, min_side)  # enlarged by s = max(min_side / short side, scale)
    enlarged_hw = tuple(x.shape[-2:])
    x, _, _ = preprocess.pad_reflect_32(x)
    padded_h, padded_w = x.shape[-2:]

    split = opts.vae_tiling is VaeTiling.UPSTREAM and max(padded_h, padded_w) > opts.vae_tile_size
    if split:  # upstream's pixel patches: each one a complete run, blended with Gaussian weights
        patches = pixel_patches(padded_h, padded_w, opts.vae_tile_size, opts.patch_stride)
    else:
        patches = [Tile(0, 0, padded_h, padded_w)]
    if len(patches) == 1:
        result = restore(x, models, opts, denoiser, schedule, noise, progress)
    else:
        blender = GaussianBlender((1, 3, padded_h, padded_w), dtype=torch.float32, device=models.device)
        for k, tile in enumerate(patches):
            patch_sr = restore(x[tile.slices], models, opts, denoiser, schedule, noise, progress, k, len(patches))
            blender.add(tile, patch_sr)
        result = blender.result()
    img = preprocess.to_unit_range(result.float())
    return preprocess.finish_output(img, enlarged_hw, target_hw).cpu()
