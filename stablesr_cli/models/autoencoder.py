"""The SD 2.x KL autoencoder (upstream `AutoencoderKL`) and its CFW variant (`AutoencoderKLResi`).

Module and attribute names equal upstream's, so `state_dict()` keys are the official checkpoint keys
(`encoder.*`, `quant_conv.*`, `post_quant_conv.*`, `decoder.*`, and for CFW `decoder.fusion_layer_<L>.*`).
Only the mid block has attention (StableSR's `attn_resolutions` is empty everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cfw import FusionLayer
from .layout import to_compute_layout, uses_channels_last
from .vae_blocks import GROUPNORM_GROUPS, ResnetBlock, vae_group_norm

LATENT_SCALE = 0.18215  # SD VAE scaling factor: sampler latent = LATENT_SCALE * raw posterior value
LOGVAR_RANGE = (-30.0, 20.0)  # upstream clamps the posterior log-variance to this range

# Upstream's Encoder records the output of the last ResnetBlock of levels 1 and 2 (hard-coded
# indices, before the downsampler). With the released 4-level config these are exactly the levels
# whose decoder counterparts carry fusion layers (1 .. len(channel_mult)-2).
ENCODER_FEATURE_LEVELS = (1, 2)


@dataclass(frozen=True)
class AutoencoderConfig:
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128  # upstream `ch`
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)  # width of level i = base_channels * channel_mult[i]
    num_res_blocks: int = 2  # per encoder level; the decoder has one more per level
    z_channels: int = 4
    embed_dim: int = 4
    num_fuse_blocks: int = 0  # 0: plain SD decoder; >0: CFW decoder with this many RRDBs per fusion layer (upstream 2)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be non-empty positive integers, got {self.channel_mult}")
        for width in self.level_channels:
            if width % GROUPNORM_GROUPS:
                raise ValueError(f"every level width must be a multiple of {GROUPNORM_GROUPS} (GroupNorm), got {width}")
        if self.num_res_blocks < 1 or self.z_channels < 1 or self.embed_dim < 1 or self.num_fuse_blocks < 0:
            raise ValueError(f"invalid autoencoder sizes: {self}")
        missing = [level for level in self.fusion_levels if level not in self.feature_levels]
        if missing:
            raise ValueError(
                f"fusion layers at decoder levels {missing} would need encoder features the upstream encoder "
                f"never records (it records levels {ENCODER_FEATURE_LEVELS}); at most 4 levels are supported for CFW"
            )

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def is_cfw(self) -> bool:
        return self.num_fuse_blocks > 0

    @property
    def feature_levels(self) -> tuple[int, ...]:
        """Encoder levels whose features `encode_with_features` returns, in order."""
        return tuple(level for level in ENCODER_FEATURE_LEVELS if level < len(self.channel_mult))

    @property
    def fusion_levels(self) -> tuple[int, ...]:
        """Decoder levels with a fusion layer; level L uses enc_features[L-1]."""
        if not self.is_cfw:
            return ()
        return tuple(range(1, len(self.channel_mult) - 1))

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, 1x1-conv projections, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = vae_group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        if uses_channels_last(h.dtype):  # channels_last: the [B, 1, H*W, C] tokens are views, both ways
            out = F.scaled_dot_product_attention(*(self._tokens_last(p(h)) for p in (self.q, self.k, self.v)))
            return x + self.proj_out(out.view(b, height, width, c).permute(0, 3, 1, 2))

        def tokens(t: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, 1, H*W, C]
            # contiguous: on CPU, SDPA falls back to the math path (an (HW)^2 logits tensor, 2.3 GB at a
            # 128x128 latent) for strided inputs; the fused kernel needs O(HW) memory
            return t.reshape(b, 1, c, height * width).transpose(2, 3).contiguous()

        # SDPA's default scale is C**-0.5, as upstream
        out = F.scaled_dot_product_attention(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)))
        out = out.transpose(2, 3).reshape(b, c, height, width)
        return x + self.proj_out(out)

    @staticmethod
    def _tokens_last(t: torch.Tensor) -> torch.Tensor:
        b, c, height, width = t.shape
        return to_compute_layout(t).permute(0, 2, 3, 1).reshape(b, 1, height * width, c)


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a 3x3 stride-2 conv without padding (asymmetric, as upstream)."""

    PAD_RIGHT_BOTTOM = (0, 1, 0, 1)

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.PAD_RIGHT_BOTTOM))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class EncoderLevel(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, downsample: bool):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(ResnetBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.downsample = Downsample(out_channels) if downsample else None


class DecoderLevel(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, upsample: bool):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(ResnetBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.upsample = Upsample(out_channels) if upsample else None


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.feature_levels = cfg.feature_levels
        widths = cfg.level_channels
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)
        self.down = nn.ModuleList(
            EncoderLevel(cfg.base_channels if i == 0 else widths[i - 1], widths[i], cfg.num_res_blocks, i != last)
            for i in range(len(widths))
        )
        self.mid = MidBlock(widths[-1])
        self.norm_out = vae_group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.z_channels, 3, padding=1)  # mean and logvar

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns (moments before quant_conv, features after the ResnetBlocks of `feature_levels`)."""
        h = self.conv_in(x)
        features: list[torch.Tensor] = []
        for level, stage in enumerate(self.down):
            for block in stage.block:
                h = block(h)
            if level in self.feature_levels:
                features.append(h)
            if stage.downsample is not None:
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h))), features


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = cfg.level_channels
        self.fusion_levels = cfg.fusion_levels
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1])
        # up[i] is level i (runs from the last level down to 0); level i's input is level i+1's width
        self.up = nn.ModuleList(
            DecoderLevel(widths[min(i + 1, len(widths) - 1)], widths[i], cfg.num_res_blocks + 1, i != 0)
            for i in range(len(widths))
        )
        for level in self.fusion_levels:
            setattr(self, f"fusion_layer_{level}", FusionLayer(widths[level], cfg.num_fuse_blocks))
        self.norm_out = vae_group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], cfg.out_channels, 3, padding=1)

    def fusion_layer(self, level: int) -> FusionLayer:
        return getattr(self, f"fusion_layer_{level}")

    def forward(self, z: torch.Tensor, enc_features: list[torch.Tensor] | None, w: float) -> torch.Tensor:
        # w == 0 skips the fusion branch: upstream adds 0*e, which is dec exactly whenever e is finite
        fuse = bool(self.fusion_levels) and w != 0.0
        if fuse and (enc_features is None or len(enc_features) < max(self.fusion_levels)):
            raise ValueError(
                f"CFW decode with w={w} needs the encoder features of levels {list(self.fusion_levels)} "
                f"(from encode_with_features of the same-size low-resolution image)"
            )
        h = self.mid(self.conv_in(z))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for block in stage.block:
                h = block(h)
            if fuse and level in self.fusion_levels:
                h = self.fusion_layer(level)(enc_features[level - 1], h, w)
            if stage.upsample is not None:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass(frozen=True)
class DiagonalGaussian:
    """The posterior N(mean, exp(logvar)); the caller supplies the noise, so it owns the RNG."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> "DiagonalGaussian":
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return cls(mean, torch.clamp(logvar, *LOGVAR_RANGE))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """mean + std*noise; upstream draws `noise` with torch.randn(mean.shape) on the CPU generator."""
        if noise.shape != self.mean.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != posterior shape {tuple(self.mean.shape)}")
        return self.mean + self.std * noise.to(device=self.mean.device, dtype=self.mean.dtype)

    def mode(self) -> torch.Tensor:
        return self.mean


class Autoencoder(nn.Module):
    """KL autoencoder; with `cfg.num_fuse_blocks > 0` its decoder is the CFW decoder (`Decoder_Mix`)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return self.encode_with_features(x)[0]

    def encode_with_features(self, x: torch.Tensor) -> tuple[DiagonalGaussian, list[torch.Tensor]]:
        """Posterior of image x in [-1, 1] plus the encoder features the CFW decoder fuses."""
        moments, features = self.encoder(to_compute_layout(x))
        return DiagonalGaussian.from_moments(self.quant_conv(moments)), features

    def decode(self, z_raw: torch.Tensor, enc_features: list[torch.Tensor] | None = None, w: float = 0.0) -> torch.Tensor:
        """Image from a raw latent (sampler latent / LATENT_SCALE). No tanh, no clamp.

        `w` is the CFW fidelity weight (upstream `--dec_w`); it is ignored by a plain SD decoder. With w == 0
        the fusion layers are not run: upstream computes dec + 0*e, identical unless e is non-finite.
        """
        return self.decoder(self.post_quant_conv(to_compute_layout(z_raw)), enc_features, float(w))
