"""viz/png.py, the PNG encoder kept for speed, held to Pillow: every buffer Agg can draw (any height and
width, any RGBA bytes) decodes, with Pillow's own decoder, to exactly the pixels it was given (alpha dropped
where every pixel is opaque, kept otherwise), and the file passes Pillow's and zlib's checks (CRCs)."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from viz import png

shapes = st.tuples(st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=40), st.just(4))


@st.composite
def buffers(draw: st.DrawFn) -> npt.NDArray[np.uint8]:
    rgba = draw(arrays(np.uint8, draw(shapes)))
    if draw(st.booleans()):
        rgba[:, :, 3] = 255  # opaque, as the figures are drawn: our own encoder's case
    return rgba


@settings(max_examples=300, deadline=None)
@given(buffers())
def test_what_pillow_decodes_is_the_buffer(rgba: npt.NDArray[np.uint8]) -> None:
    data = png.encode(rgba)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # chunk CRCs and structure
    with Image.open(io.BytesIO(data)) as image:
        opaque = bool((rgba[:, :, 3] == 255).all())
        assert image.mode == ("RGB" if opaque else "RGBA")
        decoded = np.asarray(image)
    np.testing.assert_array_equal(decoded, rgba[:, :, :3] if opaque else rgba)


def test_a_buffer_that_is_not_rgba_is_refused() -> None:
    with pytest.raises(ValueError, match="RGBA"):
        png.encode(np.zeros((2, 2, 3), dtype=np.uint8))
