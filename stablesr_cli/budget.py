"""How large one image's work gets, and whether it can fit, decided before any of it is allocated.

An upscale enlarges the input to a canvas (at least one diffusion tile on the short side, so a
1x20000 strip becomes 512x10240000), runs the autoencoders over it whole or in pixel patches, and
samples its latent in tiles. `work_sizes` repeats the pipeline's size arithmetic on plain integers;
`estimate_memory` turns those sizes and the networks' widths into bytes; `check_fits` refuses, with
one line naming the sizes, what exceeds --max-output-pixels or cannot fit in the machine at all.

The estimate counts only tensors the pipeline certainly holds at its peak (the canvas buffers, the
CFW encoder features kept through sampling, the decoder's two widest full-resolution activations,
the latent and the UNet's skip connections), so it stays below the real peak: it refuses what
cannot possibly fit, and `is_out_of_memory` recognises the failures of what still does not.

Standard library only: the CLI imports this without torch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import StableSRError
from .options import UpscaleOptions, VaeTiling

PAD_MULTIPLE = 32
"""The canvas is reflect-padded to multiples of this (pipeline/preprocess.py)."""
FLOAT32 = 4
CANVAS_CHANNELS = 3


class ImageTooLargeError(StableSRError):
    """An image whose output or working canvas is over the pixel limit, or cannot fit in memory."""


@dataclass(frozen=True)
class NetworkShapes:
    """The widths the memory estimate needs, read from the loaded networks' configs."""

    vae_level_channels: tuple[int, ...] = (128, 256, 512, 512)
    """CFW autoencoder width per level, full resolution first."""
    vae_feature_levels: tuple[int, ...] = (1, 2)
    """Encoder levels whose activations the CFW decoder fuses (kept from encode to decode)."""
    unet_level_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    unet_res_blocks: int = 2
    latent_channels: int = 4

    @property
    def vae_downscale(self) -> int:
        return 2 ** (len(self.vae_level_channels) - 1)


@dataclass(frozen=True)
class WorkSizes:
    """Heights and widths, in pixels, of what one upscale makes."""

    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    enlarged_hw: tuple[int, int]
    """The canvas before padding: the input times max(scale, one tile / short side)."""
    canvas_hw: tuple[int, int]
    """The padded canvas the autoencoders see."""
    piece_hw: tuple[int, int]
    """The largest part of the canvas run through one encode-sample-decode (a pixel patch, or all)."""
    pieces: int
    tile: int
    """Diffusion tile side in pixels."""

    @property
    def work_pixels(self) -> int:
        """Pixels of the larger of output and enlarged canvas: what --max-output-pixels limits."""
        return max(_area(self.output_hw), _area(self.enlarged_hw))


@dataclass(frozen=True)
class MemoryEstimate:
    host: int
    """Bytes in main memory (canvas buffers; with lean tiling on an accelerator, the parked activations)."""
    device: int
    """Bytes on the compute device; on the CPU this is main memory too."""


def work_sizes(height: int, width: int, opts: UpscaleOptions, tile: int) -> WorkSizes:
    """The pipeline's sizes for a `height` x `width` input and a diffusion tile of `tile` pixels.

    Mirrors preprocess.upscale_factor / prepare_input / pad_reflect_32 and tiling.pixel_patches
    (tests/test_budget.py checks them against each other).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image sides must be at least 1 pixel, got {height}x{width}")
    factor = max(tile / min(height, width), opts.scale)
    enlarged = (int(height * factor), int(width * factor))
    canvas = _padded(*enlarged)
    if opts.vae_tiling is VaeTiling.UPSTREAM and max(canvas) > opts.vae_tile_size:
        piece = (min(opts.vae_tile_size, canvas[0]), min(opts.vae_tile_size, canvas[1]))
        pieces = _patch_count(canvas[0], opts.vae_tile_size, opts.patch_stride) * _patch_count(
            canvas[1], opts.vae_tile_size, opts.patch_stride
        )
    else:
        piece, pieces = canvas, 1
    output = (int(height * opts.scale), int(width * opts.scale))
    return WorkSizes((height, width), output, enlarged, canvas, piece, pieces, tile)


def estimate_memory(
    sizes: WorkSizes, shapes: NetworkShapes, opts: UpscaleOptions, *, dtype_bytes: int, accelerator: bool
) -> MemoryEstimate:
    """A lower bound of the peak memory of one upscale (see the module notes for what is counted)."""
    canvas, piece, output = _area(sizes.canvas_hw), _area(sizes.piece_hw), _area(sizes.output_hw)
    # the padded input canvas and the decoded result (float32, on the host), and the final image
    host = (2 * canvas + output) * CANVAS_CHANNELS * FLOAT32
    device = 2 * canvas * CANVAS_CHANNELS * FLOAT32 if sizes.pieces > 1 else 0  # the patch blender's sums

    widths = shapes.vae_level_channels
    features = sum(widths[level] * piece // 4**level for level in shapes.vae_feature_levels if level < len(widths))
    # the decoder's last upsampling: its nearest-neighbour output and the conv after it, at full resolution
    decoder_top = 2 * widths[min(1, len(widths) - 1)] * piece
    vae = (features + decoder_top) * dtype_bytes
    if opts.vae_tiling is VaeTiling.LEAN:
        # full-size activations are parked tile by tile (on the host when computing on an
        # accelerator); the device holds one tile's window (with its 1-pixel halo) in and out
        window = (min(opts.vae_tile_size, max(sizes.piece_hw)) + 2) ** 2
        device += 2 * max(widths) * window * dtype_bytes
        if accelerator:
            host += vae
        else:
            device += vae
    else:
        device += vae

    latent = piece // shapes.vae_downscale**2 * shapes.latent_channels
    device += 6 * latent * FLOAT32  # z_lq, x_T, z_t, the prediction and the tile blender's two sums
    tile_latent = sizes.tile // shapes.vae_downscale
    skips = sum(
        (shapes.unet_res_blocks + 1) * width * (tile_latent >> level) ** 2
        for level, width in enumerate(shapes.unet_level_channels)
    )
    device += (opts.tile_batch or 1) * skips * dtype_bytes  # auto batches are sized to the free memory
    return MemoryEstimate(host=host, device=device)


def check_fits(
    sizes: WorkSizes, estimate: MemoryEstimate, opts: UpscaleOptions, *, host_limit: int | None, device_limit: int | None
) -> None:
    """Raise ImageTooLargeError for work over --max-output-pixels or over the machine's memory.

    `device_limit` None means the device is the CPU: host and device share `host_limit`.
    """
    (h, w), (oh, ow), (eh, ew) = sizes.input_hw, sizes.output_hw, sizes.enlarged_hw
    what = f"a {w}x{h} image at --scale {opts.scale:g} becomes {ow}x{oh}"
    smaller = "a smaller --scale"
    if (eh, ew) != (oh, ow):
        what += f", worked on at {ew}x{eh} (the short side is enlarged to one {sizes.tile}-pixel diffusion tile)"
        smaller = "a smaller --tile-size"
    limit = opts.max_output_pixels
    if limit is not None and sizes.work_pixels > limit:
        raise ImageTooLargeError(
            f"{what}: {sizes.work_pixels:,} pixels, over the --max-output-pixels limit of {limit:,}; "
            f"use {smaller}, or raise the limit (0: none)"
        )
    hint = f"use {smaller}, --vae-tiling lean or upstream with a smaller --vae-tile-size, or --tile-batch 1"
    if device_limit is None:
        needed = estimate.host + estimate.device
        if host_limit is not None and needed > host_limit:
            raise ImageTooLargeError(
                f"{what}, which needs at least {format_bytes(needed)} of memory; this machine has "
                f"{format_bytes(host_limit)}; {hint}"
            )
        return
    if estimate.device > device_limit:
        raise ImageTooLargeError(
            f"{what}, which needs at least {format_bytes(estimate.device)} of device memory; the device has "
            f"{format_bytes(device_limit)}; {hint}"
        )
    if host_limit is not None and estimate.host > host_limit:
        raise ImageTooLargeError(
            f"{what}, which needs at least {format_bytes(estimate.host)} of main memory; this machine has "
            f"{format_bytes(host_limit)}; {hint}"
        )


def machine_memory() -> int | None:
    """Bytes this process could ever use: physical memory plus swap, or less where a cgroup
    (container) limit or an address-space rlimit (`ulimit -v`) says so.

    None when the platform does not say (the memory check is then skipped).
    """
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    limits = [total + _meminfo_bytes("SwapTotal"), _read_int(Path("/sys/fs/cgroup/memory.max"))]
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        limits.append(None if soft == resource.RLIM_INFINITY else soft)
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    return min(limit for limit in limits if limit)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception means an allocation failed (main or device memory).

    By type where one exists: MemoryError and torch.OutOfMemoryError (CUDA and other accelerators).
    PyTorch's CPU allocator raises a plain RuntimeError, recognisable only by its own wording.
    """
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    out_of_memory = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if out_of_memory is not None and isinstance(error, out_of_memory):
        return True
    if type(error) is RuntimeError:
        text = str(error)
        return "DefaultCPUAllocator: can't allocate memory" in text or "Storage size calculation overflowed" in text
    return False


def format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _area(hw: tuple[int, int]) -> int:
    return hw[0] * hw[1]


def _padded(height: int, width: int) -> tuple[int, int]:
    """Upstream's padding: nothing when both sides are aligned, else both grow to the next multiple
    above (an aligned side then gains a whole PAD_MULTIPLE)."""
    if height % PAD_MULTIPLE == 0 and width % PAD_MULTIPLE == 0:
        return height, width
    return (height // PAD_MULTIPLE + 1) * PAD_MULTIPLE, (width // PAD_MULTIPLE + 1) * PAD_MULTIPLE


def _patch_count(length: int, patch: int, stride: int) -> int:
    """len(tiling.patch_starts(length, patch, stride)), without listing them (length may be huge)."""
    if length <= patch:
        return 1
    kept = (length - patch) // stride + 1  # starts that fit before the border
    # later starts are all pulled back to length - patch: one more, unless that is a kept start
    return kept + (1 if (length - patch) % stride else 0)


def _meminfo_bytes(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None  # absent, or "max" (no limit)
