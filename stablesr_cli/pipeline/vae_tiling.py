"""Memory-lean tiled VAE encode/decode (CFW included) that equals the untiled result to float tolerance.

Every activation is held as a grid of non-overlapping tiles ("cores") on a storage device; each layer
runs one output tile at a time on the compute device, so the compute device only ever holds one
tile's window and its temporaries.

Why the result matches the whole-image network:

* Convolutions: an output tile reads a window of its input that covers the conv's receptive field
  (a 1-pixel halo for 3x3 convs), gathered from the neighbouring cores of the *same* layer, with
  zeros only outside the image, exactly where the whole-image conv pads. Only the tile's own
  output core is kept, so there are no seams and no halo budget to run out of.
* GroupNorm is a synchronisation point: the statistics come from every core of the layer input,
  merged exactly over tiles (tiled_stats.py). Normalisation, SiLU and the affine are pointwise, so they are applied
  to each gathered window before the zero padding.
* The mid-block attention is global: its input is gathered whole, run through the module and split
  again. It sits at 1/8 of the image resolution, so it is small next to the full-resolution levels.

Memory: the compute device holds one tile window and its temporaries, so its use scales with the
tile size (windows are read straight into one buffer, normalised in place, statistics and the
low-precision norm go through small float64/float32 chunks). Storage holds the full-size
activations (tile_grid.py: ONE tensor each, filled core by core; freed host blocks are handed back
after every layer). Exact GroupNorm statistics need a ResnetBlock's input, hidden tensor and output
at once; a block without a shortcut writes its output over its input, which saves the third. In
low precision the decoder's upsampling conv output (the widest full-resolution activation) is
never stored: the next block recomputes it from the half-size input (`upsample_resnet`). Put
storage on the CPU (`storage_device="cpu"`) to keep an accelerator's memory proportional to the
tile size. `bench/memory_bench.py` measures whole 4x upscales against the whole-image VAE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptionError
from ..models.autoencoder import AttnBlock, Autoencoder, DiagonalGaussian
from ..models.vae_blocks import ResnetBlock
from ..models.layout import convolve
from ..models.cfw import RRDB, RRDB_LEAKY_SLOPE, RRDB_RESIDUAL_SCALE, FusionLayer, FusionResBlock, ResidualDenseBlock
from .tile_grid import Box, GridWriter, TileGrid, memory_format_of, read_concat, release_freed_host_memory
from .tiled_stats import group_stats, merged_stats, tile_stats
from .tiling import supports_float64


NORM_BAND_VALUES = 1 << 21
"""Values per float32 copy when a low-precision window is normalised (8 MiB)."""

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

    def _writer(self, height: int, width: int, stride: int, like: TileGrid, into: TileGrid | None = None) -> GridWriter:
        storage = self.storage if self.storage is not None else like.device
        return GridWriter(height, width, stride, self.side(stride), storage, into)

    def pointwise(self, fn: Callable[..., torch.Tensor], *grids: TileGrid, into: TileGrid | None = None) -> TileGrid:
        """fn of the grids' cores, core by core; `into` one of `grids` that is not needed afterwards (its
        cores are each read before they are overwritten), saving a full-size activation."""
        first = grids[0]
        out = self._writer(first.height, first.width, first.stride, first, into)
        for box in out.boxes:
            out.put(box, fn(*(g.read(box, self.device) for g in grids)))
        self._release(out)
        return out.grid()

    def read_concat(self, sources: Sequence[TileGrid], box: Box) -> torch.Tensor:
        return read_concat(sources, box, self.device)


    def _release(self, out: "GridWriter") -> None:
        if "cpu" in (self.device.type, out.storage.type):
            release_freed_host_memory()

    # --- GroupNorm as a synchronisation point ------------------------------------------------------

    def group_stats(self, sources: Sequence[TileGrid], norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact global per-group mean and 1/sqrt(var + eps) over all tiles of the channel-concatenated sources."""
        return group_stats(sources, norm, self.device, self.stats_dtype)


    def norm_silu(
        self, sources: Sequence[TileGrid], norm: nn.GroupNorm, stats: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> Pointwise:
        """silu(norm(x)) of windows of the sources, in place; `stats` (mean, rstd) when already taken."""
        mean, rstd = stats if stats is not None else self.group_stats(sources, norm)
        mean_f, rstd_f, weight, bias = mean.float(), rstd.float(), norm.weight.float(), norm.bias.float()

        def apply(x: torch.Tensor) -> torch.Tensor:
            """Overwrites x (a fresh window from `read_concat`) with silu(norm(x)) and returns it.

            In float32, in place: the same operations in the same order as ((x - m) * r) * weight + bias,
            without window-sized temporaries. A float32 window is its own buffer (and is normalised whole, so
            its outputs keep their bits); a low-precision one is normalised through float32 copies of bands of
            rows of at most NORM_BAND_VALUES values, not a float32 copy of the whole window.
            """
            if x.dtype == torch.float32:
                return normalise(x)
            rows = max(1, NORM_BAND_VALUES // (x[..., :1, :].numel()))
            for y0 in range(0, x.shape[-2], rows):
                band = x[..., y0:y0 + rows, :]
                band.copy_(normalise(band.to(torch.float32)))
            return x

        def normalise(y: torch.Tensor) -> torch.Tensor:
            b, c = y.shape[:2]
            groups = norm.num_groups
            yg = y.view(b, groups, c // groups, *y.shape[2:])
            yg.sub_(mean_f.reshape(b, groups, 1, 1, 1)).mul_(rstd_f.reshape(b, groups, 1, 1, 1))
            y.mul_(weight.view(1, c, 1, 1)).add_(bias.view(1, c, 1, 1))
            return F.silu(y, inplace=True)

        return apply

    # --- convolutions ------------------------------------------------------------------------------

    def _window(self, sources: Sequence[TileGrid], y0: int, y1: int, x0: int, x1: int, pre: Pointwise | None) -> torch.Tensor:
        """Rows [y0, y1), cols [x0, x1) of pre(concat(sources)), zero outside the image (the conv padding)."""
        height, width = sources[0].height, sources[0].width
        inner = Box(max(y0, 0), min(y1, height), max(x0, 0), min(x1, width))
        if inner == Box(y0, y1, x0, x1):  # no padding: the gathered window is the conv's input
            t = self.read_concat(sources, inner)
            return t if pre is None else pre(t)
        # padded: zeros with the window written inside (one window-sized tensor, where F.pad made a second)
        first = sources[0].data
        shape = (first.shape[0], sum(s.data.shape[1] for s in sources), y1 - y0, x1 - x0)
        padded = torch.empty(shape, dtype=first.dtype, device=self.device, memory_format=memory_format_of(first)).zero_()
        interior = padded[..., inner.y0 - y0:inner.y1 - y0, inner.x0 - x0:inner.x1 - x0]
        if pre is None:
            start = 0
            for s in sources:
                channels = s.data.shape[1]
                interior[:, start:start + channels].copy_(s.data[..., inner.y0:inner.y1, inner.x0:inner.x1])
                start += channels
        else:  # the norm runs on a dense copy, exactly as on an unpadded window
            interior.copy_(pre(self.read_concat(sources, inner)))
        return padded

    @staticmethod
    def _zero_padded(t: torch.Tensor, inner: Box, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        """t, which covers `inner`, as rows [y0, y1) and cols [x0, x1) with zeros around it."""
        if inner == Box(y0, y1, x0, x1):
            return t
        shape = (*t.shape[:2], y1 - y0, x1 - x0)
        padded = torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=memory_format_of(t)).zero_()
        padded[..., inner.y0 - y0:inner.y1 - y0, inner.x0 - x0:inner.x1 - x0].copy_(t)
        return padded

    def _upsampled_window(self, sources: Sequence[TileGrid], y0: int, y1: int, x0: int, x1: int, pre: Pointwise | None) -> torch.Tensor:
        """The same window of the nearest-x2-upsampled input (zeros outside the upsampled image)."""
        sy0, sx0 = y0 // 2, x0 // 2
        small = self._window(sources, sy0, (y1 - 1) // 2 + 1, sx0, (x1 - 1) // 2 + 1, pre)
        # one gather straight to the window (repeat_interleave twice, then a slice, made three copies)
        rows = torch.arange(y0, y1, device=small.device) // 2 - sy0
        cols = torch.arange(x0, x1, device=small.device) // 2 - sx0
        return small[:, :, rows[:, None], cols].contiguous(memory_format=memory_format_of(small))

    def conv(
        self,
        sources: Sequence[TileGrid],
        conv: nn.Conv2d,
        *,
        pre: Pointwise | None = None,
        finish: Finish | None = None,
        upsample: bool = False,
        pad_end: int = 0,
        into: TileGrid | None = None,
    ) -> TileGrid:
        """conv(pre(concat(sources))) tile by tile; `upsample` puts a nearest x2 before the conv, `pad_end` adds
        zero rows/cols at the bottom/right (the VAE downsampler); `finish(out, box)` post-processes each core;
        `into` an activation, not one of `sources`, to overwrite (see `GridWriter`)."""
        kernel, stride, padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        scale = 2 if upsample else 1
        in_h, in_w = sources[0].height * scale, sources[0].width * scale
        out_h = (in_h + 2 * padding + pad_end - kernel) // stride + 1
        out_w = (in_w + 2 * padding + pad_end - kernel) // stride + 1
        out_stride = max(1, sources[0].stride * stride // scale)
        grid = self._writer(out_h, out_w, out_stride, sources[0], into)
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

    def _residual_block(
        self, sources: Sequence[TileGrid], norm1, conv1, norm2, conv2, shortcut: nn.Conv2d | None, into: TileGrid | None = None
    ) -> TileGrid:
        h = self.conv(sources, conv1, pre=self.norm_silu(sources, norm1))

        def add_skip(out: torch.Tensor, box: Box) -> torch.Tensor:
            x = self.read_concat(sources, box)
            skip = x if shortcut is None else convolve(shortcut, x)
            return out.add_(skip)  # the conv's fresh output tile; addition commutes, so equal to skip + out

        return self.conv([h], conv2, pre=self.norm_silu([h], norm2), finish=add_skip, into=into)

    def upsample_resnet(self, upsample: nn.Conv2d, small: TileGrid, block: ResnetBlock) -> TileGrid:
        """block(upsample(nearest_x2(small))) without keeping the upsampling conv's full-size output.

        That output, 2x the size and as wide as `small`, would be the block's input, held with the block's
        hidden tensor and output: at the decoder's last level, the widest full-resolution activation
        there is. Here its cores are recomputed from `small` instead, once for norm1's statistics and once,
        with a 1-pixel halo, for conv1's windows; each window's core also gives the block's skip, stored at
        the block's (narrower) output width, which the second conv then overwrites with the output. It
        costs one more pass of the upsampling conv. The result equals `resnet(block, conv(..., upsample=True))`
        up to rounding: a conv's output pixel is the same sum whatever window it is computed in, but the CPU
        backend picks kernels by input size, and some (small windows) round differently, by about 1e-6 in
        float32. The decoder therefore uses this in low precision only, and float32 keeps its exact bits.
        """
        height, width, stride = 2 * small.height, 2 * small.width, max(1, small.stride // 2)
        side = self.side(stride)
        storage = self.storage if self.storage is not None else small.device
        pad = upsample.padding[0]
        reach = upsample.kernel_size[0] - 1 - pad

        def upsampled(box: Box) -> torch.Tensor:
            win = self._upsampled_window([small], box.y0 - pad, box.y1 + reach, box.x0 - pad, box.x1 + reach, None)
            return convolve(upsample, win)

        groups = block.norm1.num_groups
        whole = TileGrid.layout(height, width, side)
        stats = merged_stats(
            (tile_stats([TileGrid(upsampled(box), stride, side)], Box(0, box.y1 - box.y0, 0, box.x1 - box.x0), groups,
                        self.stats_dtype, self.device)
             for box in whole),
            block.norm1.eps,
        )  # fmt: skip
        pre = self.norm_silu([], block.norm1, stats)
        hidden = GridWriter(height, width, stride, side, storage)
        skip = GridWriter(height, width, stride, side, storage)
        k1, p1 = block.conv1.kernel_size[0], block.conv1.padding[0]
        for box in whole:
            y0, y1, x0, x1 = box.y0 - p1, box.y1 - p1 + k1 - 1, box.x0 - p1, box.x1 - p1 + k1 - 1
            inner = Box(max(y0, 0), min(y1, height), max(x0, 0), min(x1, width))
            x = upsampled(inner)
            core = (..., slice(box.y0 - inner.y0, box.y1 - inner.y0), slice(box.x0 - inner.x0, box.x1 - inner.x0))
            # the 1x1 shortcut over the whole window, then its core: no window-wide copy of the input core
            skip.put(box, (x if block.shortcut is None else convolve(block.shortcut, x))[core])
            hidden.put(box, convolve(block.conv1, self._zero_padded(pre(x), inner, y0, y1, x0, x1)))
        self._release(hidden)
        h, shortcut = hidden.grid(), skip.grid()
        return self.conv(
            [h], block.conv2, pre=self.norm_silu([h], block.norm2),
            finish=lambda out, box: out.add_(shortcut.read(box, self.device)), into=shortcut,
        )  # fmt: skip

    def resnet(self, block: ResnetBlock, x: TileGrid, *, reuse_input: bool = False) -> TileGrid:
        """`reuse_input`: x is not needed afterwards, so the output overwrites it core by core. That is safe
        because the block's only read of x after its first conv is the skip of the same core, taken just
        before the core is written; it saves one of the three full-size activations a block holds."""
        into = x if reuse_input and block.shortcut is None else None
        return self._residual_block([x], block.norm1, block.conv1, block.norm2, block.conv2, block.shortcut, into)

    def fusion_resblock(self, block: FusionResBlock, sources: Sequence[TileGrid]) -> TileGrid:
        return self._residual_block(sources, block.norm1, block.conv1, block.norm2, block.conv2, block.shortcut)

    def attention(self, attn: AttnBlock, x: TileGrid) -> TileGrid:
        # global over all positions: run whole at this (1/8) resolution, then split again
        whole = attn(self.gather(x))
        return self.split(whole.to(self.storage if self.storage is not None else x.device), x.stride)

    def mid(self, mid: nn.Module, x: TileGrid, *, reuse_input: bool = False) -> TileGrid:
        h = self.attention(mid.attn_1, self.resnet(mid.block_1, x, reuse_input=reuse_input))
        return self.resnet(mid.block_2, h, reuse_input=True)

    def dense_block(self, rdb: ResidualDenseBlock, x: TileGrid) -> TileGrid:
        features = [x]
        for conv in rdb.convs[:-1]:
            features.append(self.conv(features, conv, finish=lambda out, _box: F.leaky_relu(out, RRDB_LEAKY_SLOPE)))
        return self.conv(
            features, rdb.conv5, finish=lambda out, box: x.read(box, self.device) + RRDB_RESIDUAL_SCALE * out
        )

    def rrdb(self, block: RRDB, x: TileGrid) -> TileGrid:
        h = self.dense_block(block.rdb3, self.dense_block(block.rdb2, self.dense_block(block.rdb1, x)))
        # x (the block's input) is not needed after this: the fusion layer only passes its own temporaries
        return self.pointwise(lambda a, b: a + RRDB_RESIDUAL_SCALE * b, x, h, into=x)

    def fusion(self, layer: FusionLayer, enc: TileGrid, dec: TileGrid, w: float) -> TileGrid:
        e = self.fusion_resblock(layer.encode_enc_1, [enc, dec])  # encoder feature first, as upstream
        for block in layer.encode_enc_2:
            e = self.rrdb(block, e)
        e = self.fusion_resblock(layer.encode_enc_3, [e])
        return self.pointwise(lambda d, r: d + w * r, dec, e, into=dec)  # the decoder replaces dec by the result


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
            h = run.resnet(block, h, reuse_input=all(h is not f for f in features))
        if level in encoder.feature_levels:
            features.append(h)
        if stage.downsample is not None:
            h = run.conv([h], stage.downsample.conv, pad_end=stage.downsample.PAD_RIGHT_BOTTOM[1])
    h = run.mid(encoder.mid, h, reuse_input=all(h is not f for f in features))
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
    h = run.mid(decoder.mid, h, reuse_input=True)
    upsample: nn.Conv2d | None = None  # the previous level's upsampling conv, fused into this level's first block
    for level in reversed(range(len(decoder.up))):
        stage = decoder.up[level]
        for block in stage.block:
            if upsample is not None and h.data.dtype != torch.float32:
                h, upsample = run.upsample_resnet(upsample, h, block), None
            elif upsample is not None:
                h = run.conv([h], upsample, upsample=True)  # rebinding h frees the half-size input first
                h, upsample = run.resnet(block, h, reuse_input=True), None
            else:
                h = run.resnet(block, h, reuse_input=True)
        if fuse and level in decoder.fusion_levels:
            feature = enc_features[level - 1]
            if tuple(feature.shape[-2:]) != (h.height, h.width):
                raise ValueError(
                    f"encoder feature {level - 1} is {tuple(feature.shape[-2:])}, decoder level {level} is "
                    f"{(h.height, h.width)}: encode the low-resolution image at the output size"
                )
            h = run.fusion(decoder.fusion_layer(level), run.split(feature, h.stride), h, w)
        if stage.upsample is not None:
            upsample = stage.upsample.conv
    if upsample is not None:  # a last level without blocks (not in any released model)
        h = run.conv([h], upsample, upsample=True)
    out = run.conv([h], decoder.conv_out, pre=run.norm_silu([h], decoder.norm_out))
    return out.data.to(run.storage if run.storage is not None else z_raw.device)
