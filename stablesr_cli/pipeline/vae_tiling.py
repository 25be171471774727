"""Memory-lean tiled VAE encode/decode (CFW included) that equals the untiled result to float tolerance.

Every activation is held as a grid of non-overlapping tiles ("cores") on a storage device; each layer
runs one output tile at a time on the compute device, so the compute device only ever holds one
tile's window and its temporaries.

Why the result matches the whole-image network:

* Convolutions: an output tile reads a window of its input that covers the conv's receptive field
  (a 1-pixel halo for 3x3 convs), gathered from the neighbouring cores of the *same* layer, with
  zeros only outside the image, exactly where the whole-image conv pads. Only the tile's own
  output core is kept, so there are no seams and no halo budget to run out of.
* GroupNorm is a synchronisation point: the statistics come from every core of the layer input.
  Per tile we take the count, mean and sum of squared deviations in float64 and merge them with
  Chan's parallel formula, which gives the exact global mean and (population) variance. The
  WebUI's Tiled VAE instead averages per-tile variances weighted by pixel count, which ignores the
  spread of the tile means. Normalisation, SiLU and the affine are pointwise, so they are applied
  to each gathered window before the zero padding.
* The mid-block attention is global: its input is gathered whole, run through the module and split
  again. It sits at 1/8 of the image resolution, so it is small next to the full-resolution levels.

Memory: the compute device holds one tile window and its temporaries, so its use scales with the
tile size. Storage holds up to three full-size activations at a time (a ResnetBlock's input, hidden
tensor and output), which is unavoidable for exact GroupNorm statistics without recomputation; each is
ONE tensor that the layer fills core by core, and on host memory the freed tile temporaries are handed
back to the system after every layer (see `release_freed_host_memory`). Put storage on the CPU
(`storage_device="cpu"`) to keep an accelerator's memory proportional to the tile size. Measured on CPU
(storage = compute), full-size CFW encode with features + decode, 512x512 bf16, 256 px tiles: whole
+633 MiB peak RSS, lean +482 MiB (it was +905 MiB with one tensor per tile and no trimming).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptionError
from ..models.autoencoder import AttnBlock, Autoencoder, DiagonalGaussian
from ..models.vae_blocks import ResnetBlock
from ..models.cpu_packing import convolve
from ..models.cfw import RRDB, RRDB_LEAKY_SLOPE, RRDB_RESIDUAL_SCALE, FusionLayer, FusionResBlock, ResidualDenseBlock
from .tiling import supports_float64


@dataclass(frozen=True)
class Box:
    """Rows [y0, y1) and columns [x0, x1) of a feature map."""

    y0: int
    y1: int
    x0: int
    x1: int


class TileGrid:
    """A [B, C, H, W] activation on its storage device, handled as non-overlapping `side` x `side` tiles
    (smaller at the right/bottom edges), row-major; `stride` is the feature map's downscale from the image.

    The tiles live in ONE full-size tensor (`data`), written core by core as a layer produces them. Kept as
    separate tensors, thousands of tile-sized blocks came and went per decode and the C allocator kept the
    freed ones (glibc serves blocks under its mmap threshold, up to 32 MiB, from a heap it rarely shrinks),
    so the host's peak grew well past the live data: a 512x512 bf16 CFW encode+decode peaked 40% above the
    whole-image VAE. One block per activation is returned to the system as soon as the layer is done with it.
    """

    def __init__(self, data: torch.Tensor, stride: int, side: int):
        self.data, self.stride, self.side = data, stride, side
        self.height, self.width = data.shape[-2:]
        self.columns = -(-self.width // side)
        self.boxes = self.layout(self.height, self.width, side)

    @staticmethod
    def layout(height: int, width: int, side: int) -> list[Box]:
        return [
            Box(y, min(y + side, height), x, min(x + side, width))
            for y in range(0, height, side)
            for x in range(0, width, side)
        ]

    @classmethod
    def split(cls, t: torch.Tensor, stride: int, side: int, storage: torch.device) -> "TileGrid":
        return cls(t.to(storage), stride, side)

    @property
    def tiles(self) -> list[torch.Tensor]:
        return [self.data[..., b.y0:b.y1, b.x0:b.x1] for b in self.boxes]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def read(self, box: Box, device: torch.device) -> torch.Tensor:
        """The region `box` (inside the image) on `device`, a dense tensor in the activation's layout."""
        region = self.data[..., box.y0:box.y1, box.x0:box.x1].to(device)
        return region.contiguous(memory_format=_memory_format(self.data))


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() else torch.contiguous_format


class _GridWriter:
    """Collects the cores of one layer's output into a full-size tensor on the storage device."""

    def __init__(self, height: int, width: int, stride: int, side: int, storage: torch.device):
        self.height, self.width, self.stride, self.side, self.storage = height, width, stride, side, storage
        self.boxes = TileGrid.layout(height, width, side)
        self.data: torch.Tensor | None = None

    def put(self, box: Box, core: torch.Tensor) -> None:
        if self.data is None:  # shape, dtype and layout of the first core; allocated once per activation
            self.data = torch.empty(
                (*core.shape[:2], self.height, self.width), dtype=core.dtype, device=self.storage,
                memory_format=_memory_format(core),
            )  # fmt: skip
        self.data[..., box.y0:box.y1, box.x0:box.x1].copy_(core)

    def grid(self) -> TileGrid:
        return TileGrid(self.data, self.stride, self.side)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (other C libraries, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed_host_memory() -> None:
    """Give the pages of freed host blocks back to the system after a layer.

    Every layer allocates and frees tile-sized windows, outputs and float32 norm copies of many sizes
    (edge tiles, levels); glibc serves blocks under its mmap threshold (up to 32 MiB) from a heap whose
    free pages it keeps resident, so without this the peak RSS of a lean decode grows layer by layer past
    that of the whole-image VAE. One call per layer costs well under a millisecond.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


Pointwise = Callable[[torch.Tensor], torch.Tensor]
Finish = Callable[[torch.Tensor, Box], torch.Tensor]


class _TiledRunner:
    """Runs the autoencoder's layers tile by tile; one instance per encode/decode call."""

    def __init__(self, vae: Autoencoder, tile: int, storage: torch.device | None):
        if not isinstance(tile, int) or tile < 1:
            raise OptionError(f"VAE tile size must be a positive number of pixels, got {tile!r}")
        self.vae = vae
        self.tile = tile
        self.device = next(vae.parameters()).device
        self.storage = storage
        # float64 keeps the merged statistics exact over many tiles; MPS has no float64
        self.stats_dtype = torch.float64 if supports_float64(self.device) else torch.float32

    # --- grids -----------------------------------------------------------------------------------

    def side(self, stride: int) -> int:
        """Tile side at a feature map `stride` times smaller than the image: the same image area per tile."""
        return max(1, -(-self.tile // stride))

    def split(self, t: torch.Tensor, stride: int) -> TileGrid:
        storage = self.storage if self.storage is not None else t.device
        return TileGrid.split(t, stride, self.side(stride), torch.device(storage))

    def gather(self, grid: TileGrid) -> torch.Tensor:
        return grid.read(Box(0, grid.height, 0, grid.width), self.device)

    def _writer(self, height: int, width: int, stride: int, like: TileGrid) -> _GridWriter:
        storage = self.storage if self.storage is not None else like.device
        return _GridWriter(height, width, stride, self.side(stride), storage)

    def pointwise(self, fn: Callable[..., torch.Tensor], *grids: TileGrid) -> TileGrid:
        first = grids[0]
        out = self._writer(first.height, first.width, first.stride, first)
        for box in out.boxes:
            out.put(box, fn(*(g.read(box, self.device) for g in grids)))
        self._release(out)
        return out.grid()

    def _release(self, out: "_GridWriter") -> None:
        if "cpu" in (self.device.type, out.storage.type):
            release_freed_host_memory()

    # --- GroupNorm as a synchronisation point ------------------------------------------------------

    def group_stats(self, sources: Sequence[TileGrid], norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact global per-group mean and 1/sqrt(var + eps) over all tiles of the channel-concatenated sources."""
        groups = norm.num_groups
        count = 0
        mean = m2 = None
        for box in sources[0].boxes:
            x = torch.cat([s.read(box, self.device) for s in sources], dim=1).to(self.stats_dtype)
            x = x.reshape(x.shape[0], groups, -1)
            n = x.shape[-1]
            tile_mean = x.mean(dim=-1)
            tile_m2 = (x - tile_mean[..., None]).square().sum(dim=-1)
            if mean is None:
                count, mean, m2 = n, tile_mean, tile_m2
                continue
            # Chan et al.: merge (count, mean, sum of squared deviations) without cancellation
            total = count + n
            delta = tile_mean - mean
            mean = mean + delta * (n / total)
            m2 = m2 + tile_m2 + delta.square() * (count * n / total)
            count = total
        variance = m2 / count
        return mean, torch.rsqrt(variance + norm.eps)

    def norm_silu(self, sources: Sequence[TileGrid], norm: nn.GroupNorm) -> Pointwise:
        mean, rstd = self.group_stats(sources, norm)

        def apply(x: torch.Tensor) -> torch.Tensor:
            b, c = x.shape[:2]
            groups = norm.num_groups
            # one float32 copy of the window, then in place: the same operations in the same order as
            # ((x - m) * r) * weight + bias, without four more window-sized float32 temporaries
            y = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
            yg = y.view(b, groups, c // groups, *x.shape[2:])
            yg.sub_(mean.float().reshape(b, groups, 1, 1, 1)).mul_(rstd.float().reshape(b, groups, 1, 1, 1))
            y.mul_(norm.weight.float().view(1, c, 1, 1)).add_(norm.bias.float().view(1, c, 1, 1))
            return F.silu(y, inplace=True).to(x.dtype)

        return apply

    # --- convolutions ------------------------------------------------------------------------------

    def _window(self, sources: Sequence[TileGrid], y0: int, y1: int, x0: int, x1: int, pre: Pointwise | None) -> torch.Tensor:
        """Rows [y0, y1), cols [x0, x1) of pre(concat(sources)), zero outside the image (the conv padding)."""
        height, width = sources[0].height, sources[0].width
        inner = Box(max(y0, 0), min(y1, height), max(x0, 0), min(x1, width))
        t = torch.cat([s.read(inner, self.device) for s in sources], dim=1)
        if pre is not None:
            t = pre(t)
        return F.pad(t, (inner.x0 - x0, x1 - inner.x1, inner.y0 - y0, y1 - inner.y1))

    def _upsampled_window(self, sources: Sequence[TileGrid], y0: int, y1: int, x0: int, x1: int, pre: Pointwise | None) -> torch.Tensor:
        """The same window of the nearest-x2-upsampled input (zeros outside the upsampled image)."""
        sy0, sx0 = y0 // 2, x0 // 2
        small = self._window(sources, sy0, (y1 - 1) // 2 + 1, sx0, (x1 - 1) // 2 + 1, pre)
        big = small.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        return big[..., y0 - 2 * sy0:y1 - 2 * sy0, x0 - 2 * sx0:x1 - 2 * sx0]

    def conv(
        self,
        sources: Sequence[TileGrid],
        conv: nn.Conv2d,
        *,
        pre: Pointwise | None = None,
        finish: Finish | None = None,
        upsample: bool = False,
        pad_end: int = 0,
    ) -> TileGrid:
        """conv(pre(concat(sources))) tile by tile; `upsample` puts a nearest x2 before the conv, `pad_end` adds
        zero rows/cols at the bottom/right (the VAE downsampler); `finish(out, box)` post-processes each core."""
        kernel, stride, padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        scale = 2 if upsample else 1
        in_h, in_w = sources[0].height * scale, sources[0].width * scale
        out_h = (in_h + 2 * padding + pad_end - kernel) // stride + 1
        out_w = (in_w + 2 * padding + pad_end - kernel) // stride + 1
        out_stride = max(1, sources[0].stride * stride // scale)
        grid = self._writer(out_h, out_w, out_stride, sources[0])
        window = self._upsampled_window if upsample else self._window
        for box in grid.boxes:
            win = window(
                sources,
                box.y0 * stride - padding, (box.y1 - 1) * stride - padding + kernel,
                box.x0 * stride - padding, (box.x1 - 1) * stride - padding + kernel,
                pre,
            )
            out = convolve(conv, win, stride=stride)
            if finish is not None:
                out = finish(out, box)
            grid.put(box, out)
        self._release(grid)
        return grid.grid()

    def pointwise_conv(self, grid: TileGrid, conv: nn.Conv2d) -> TileGrid:
        return self.pointwise(lambda t: convolve(conv, t), grid)

    # --- blocks ------------------------------------------------------------------------------------

    def _residual_block(self, sources: Sequence[TileGrid], norm1, conv1, norm2, conv2, shortcut: nn.Conv2d | None) -> TileGrid:
        h = self.conv(sources, conv1, pre=self.norm_silu(sources, norm1))

        def add_skip(out: torch.Tensor, box: Box) -> torch.Tensor:
            x = torch.cat([s.read(box, self.device) for s in sources], dim=1)
            skip = x if shortcut is None else convolve(shortcut, x)
            return skip + out

        return self.conv([h], conv2, pre=self.norm_silu([h], norm2), finish=add_skip)

    def resnet(self, block: ResnetBlock, x: TileGrid) -> TileGrid:
        return self._residual_block([x], block.norm1, block.conv1, block.norm2, block.conv2, block.shortcut)

    def fusion_resblock(self, block: FusionResBlock, sources: Sequence[TileGrid]) -> TileGrid:
        return self._residual_block(sources, block.norm1, block.conv1, block.norm2, block.conv2, block.shortcut)

    def attention(self, attn: AttnBlock, x: TileGrid) -> TileGrid:
        # global over all positions: run whole at this (1/8) resolution, then split again
        whole = attn(self.gather(x))
        return self.split(whole.to(self.storage if self.storage is not None else x.device), x.stride)

    def mid(self, mid: nn.Module, x: TileGrid) -> TileGrid:
        return self.resnet(mid.block_2, self.attention(mid.attn_1, self.resnet(mid.block_1, x)))

    def dense_block(self, rdb: ResidualDenseBlock, x: TileGrid) -> TileGrid:
        features = [x]
        for conv in rdb.convs[:-1]:
            features.append(self.conv(features, conv, finish=lambda out, _box: F.leaky_relu(out, RRDB_LEAKY_SLOPE)))
        return self.conv(
            features, rdb.conv5, finish=lambda out, box: x.read(box, self.device) + RRDB_RESIDUAL_SCALE * out
        )

    def rrdb(self, block: RRDB, x: TileGrid) -> TileGrid:
        h = self.dense_block(block.rdb3, self.dense_block(block.rdb2, self.dense_block(block.rdb1, x)))
        return self.pointwise(lambda a, b: a + RRDB_RESIDUAL_SCALE * b, x, h)

    def fusion(self, layer: FusionLayer, enc: TileGrid, dec: TileGrid, w: float) -> TileGrid:
        e = self.fusion_resblock(layer.encode_enc_1, [enc, dec])  # encoder feature first, as upstream
        for block in layer.encode_enc_2:
            e = self.rrdb(block, e)
        e = self.fusion_resblock(layer.encode_enc_3, [e])
        return self.pointwise(lambda d, r: d + w * r, dec, e)


@torch.no_grad()
def tiled_encode(
    vae: Autoencoder, x: torch.Tensor, tile: int, *, storage_device: torch.device | str | None = None
) -> tuple[DiagonalGaussian, list[torch.Tensor]]:
    """`vae.encode_with_features(x)` computed tile by tile; `tile` is the tile side in image pixels.

    Results (posterior and CFW encoder features) are returned on `storage_device` (default: x's device).
    """
    run = _TiledRunner(vae, tile, torch.device(storage_device) if storage_device is not None else None)
    encoder = vae.encoder
    h = run.conv([run.split(x, 1)], encoder.conv_in)
    features: list[TileGrid] = []
    for level, stage in enumerate(encoder.down):
        for block in stage.block:
            h = run.resnet(block, h)
        if level in encoder.feature_levels:
            features.append(h)
        if stage.downsample is not None:
            h = run.conv([h], stage.downsample.conv, pad_end=stage.downsample.PAD_RIGHT_BOTTOM[1])
    h = run.mid(encoder.mid, h)
    moments = run.conv([h], encoder.conv_out, pre=run.norm_silu([h], encoder.norm_out))
    moments = run.pointwise_conv(moments, vae.quant_conv)
    out_device = run.storage if run.storage is not None else x.device
    # the grids already sit in storage: hand them over without another full-size copy
    posterior = DiagonalGaussian.from_moments(moments.data.to(out_device))
    return posterior, [f.data.to(out_device) for f in features]


@torch.no_grad()
def tiled_decode(
    vae: Autoencoder,
    z_raw: torch.Tensor,
    tile: int,
    enc_features: list[torch.Tensor] | None = None,
    w: float = 0.0,
    *,
    storage_device: torch.device | str | None = None,
) -> torch.Tensor:
    """`vae.decode(z_raw, enc_features, w)` computed tile by tile; `tile` is the tile side in output pixels.

    As in `Autoencoder.decode`, w == 0 skips the CFW fusion branch (identical unless it is non-finite).
    """
    run = _TiledRunner(vae, tile, torch.device(storage_device) if storage_device is not None else None)
    decoder = vae.decoder
    w = float(w)
    fuse = bool(decoder.fusion_levels) and w != 0.0
    if fuse and (enc_features is None or len(enc_features) < max(decoder.fusion_levels)):
        raise ValueError(f"CFW decode with w={w} needs the encoder features of levels {list(decoder.fusion_levels)}")
    h = run.pointwise_conv(run.split(z_raw, vae.config.downscale), vae.post_quant_conv)
    h = run.conv([h], decoder.conv_in)
    h = run.mid(decoder.mid, h)
    for level in reversed(range(len(decoder.up))):
        stage = decoder.up[level]
        for block in stage.block:
            h = run.resnet(block, h)
        if fuse and level in decoder.fusion_levels:
            feature = enc_features[level - 1]
            if tuple(feature.shape[-2:]) != (h.height, h.width):
                raise ValueError(
                    f"encoder feature {level - 1} is {tuple(feature.shape[-2:])}, decoder level {level} is "
                    f"{(h.height, h.width)}: encode the low-resolution image at the output size"
                )
            h = run.fusion(decoder.fusion_layer(level), run.split(feature, h.stride), h, w)
        if stage.upsample is not None:
            h = run.conv([h], stage.upsample.conv, upsample=True)
    out = run.conv([h], decoder.conv_out, pre=run.norm_silu([h], decoder.norm_out))
    return out.data.to(run.storage if run.storage is not None else z_raw.device)
