"""A PNG encoder for opaque Agg buffers: RGB, no row filter, zlib level 1.

Pillow's encoder tries every row filter on every row (adaptive filtering); for a plot, mostly flat
colour, that doubles the encoding time for a few percent fewer bytes. Here the alpha channel is dropped
(the figures are drawn on an opaque white face; a buffer with any transparency goes to Pillow as RGBA)
and the rows are deflated as they are: about half of Pillow's time, the same pixels.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import numpy.typing as npt
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVEL = 1
"""zlib level: a third of the default's time for a few percent more bytes."""


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def encode(rgba: npt.NDArray[np.uint8]) -> bytes:
    """The PNG of an (height, width, 4) uint8 buffer, as Agg draws it."""
    height, width, depth = rgba.shape
    if depth != 4:
        raise ValueError(f"expected an RGBA buffer, got {depth} channels")
    if int(rgba[:, :, 3].min()) != 255:
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, format="png", compress_level=LEVEL)
        return buffer.getvalue()
    rows = np.empty((height, width * 3 + 1), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "None" for every row
    for channel in range(3):  # one strided copy per channel: several times faster than one (h, w, 3) copy
        rows[:, 1 + channel :: 3] = rgba[:, :, channel]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlace
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.data, LEVEL))
        + _chunk(b"IEND", b"")
    )
