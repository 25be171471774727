"""Image files in and out, in one import: what people have on disk becomes a `Picture`, and back.

The work is done in the modules named below; this one only gathers their public names, so callers
(the CLI, tests, Python users) need not know how reading and writing are split.
  picture.py  the `Picture` type          read.py   bytes / Pillow image -> Picture
  sniff.py    opening, pixel limit        write.py  Picture -> file / bytes / Pillow image
  metadata.py EXIF orientation, DPI       png16.py  16-bit colour PNG decode trick and writer
"""

from __future__ import annotations

from .picture import LUMA_WEIGHTS, STDIN_NAME, Picture, quantise_8bit, quantise_16bit
from .read import picture_from_pillow, read_picture
from .sniff import DEFAULT_MAX_PIXELS
from .write import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_WEBP_QUALITY,
    FORMATS_WITHOUT_ALPHA,
    WRITABLE_FORMATS,
    encode_picture,
    format_for_path,
    pillow_image,
    write_picture,
)

__all__ = [
    "DEFAULT_JPEG_QUALITY",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_WEBP_QUALITY",
    "FORMATS_WITHOUT_ALPHA",
    "LUMA_WEIGHTS",
    "STDIN_NAME",
    "WRITABLE_FORMATS",
    "Picture",
    "encode_picture",
    "format_for_path",
    "picture_from_pillow",
    "pillow_image",
    "quantise_16bit",
    "quantise_8bit",
    "read_picture",
    "write_picture",
]
