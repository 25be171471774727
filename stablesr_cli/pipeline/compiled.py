"""Optional `torch.compile` of the three networks that do nearly all the work.

The UNet, the time-aware encoder and the CFW decoder are compiled in place (`nn.Module.compile`),
so every reference to them (the `sd_vae is cfw_vae` sharing included) keeps working and the
weights are not copied. Shapes are compiled static (`dynamic=False`): one image's tiles all have
the same shape, and the sampler pads the last tile batch to the full batch (see
`sampler.blended_prediction`), so one image compiles each network once and later images of the
same size reuse that code. A new image size compiles again; after torch's recompile limit
(`torch._dynamo.config.recompile_limit`, 8 by default) further sizes run eagerly.

Inductor's on-disk cache is pointed at our cache folder (unless TORCHINDUCTOR_CACHE_DIR is set),
so the generated kernels of one run are reused by the next one instead of being rebuilt.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from torch import nn

from ..models.layout import prepare_for_compile

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_inductor_cache(cache_root: Path) -> Path:
    """Point inductor's cache at `cache_root/inductor` unless the user chose a folder; the folder in use."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get(INDUCTOR_CACHE_ENV)
    # importing torch._dynamo can already have written torch's own default (a /tmp folder) into the
    # variable: that one is not the user's choice
    if chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        return Path(chosen)
    folder = cache_root / "inductor"
    os.environ[INDUCTOR_CACHE_ENV] = str(folder)  # read by inductor when it first compiles
    return folder


def compile_networks(models, cache_root: Path | None = None):
    """`models` (a StableSRModels) with UNet, time encoder and CFW decoder compiled; padding of the
    last tile batch switched on so every tile call of one image has the same shape."""
    if cache_root is not None:
        use_inductor_cache(cache_root)
    for network in (models.unet, models.time_encoder, models.cfw_vae.decoder):
        _compile(network)
    return dataclasses.replace(models, compiled=True)


def _compile(network: nn.Module) -> None:
    # the oneDNN-packed weights and the weight-layout hooks of the eager path would only break graphs
    prepare_for_compile(network)
    # mode "default": "reduce-overhead" would add CUDA graphs, which hold a private memory pool per
    # shape and do not apply on CPU; "max-autotune" spends minutes benchmarking kernels per shape
    network.compile(backend="inductor", dynamic=False, fullgraph=False)
