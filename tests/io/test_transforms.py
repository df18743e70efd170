"""medfake.io.transforms: HU, windowing, resizing and slice-normal maths on plain arrays."""

from __future__ import annotations

import numpy as np
import pytest

from medfake.io.transforms import resize, slice_normal, to_hu, window, window_uint8


def test_slice_normal_maths():
    np.testing.assert_allclose(slice_normal((1, 0, 0, 0, 1, 0)), [0, 0, 1])
    np.testing.assert_allclose(slice_normal((0, 1, 0, 0, 0, -1)), [-1, 0, 0])  # sagittal
    with pytest.raises(ValueError):
        slice_normal((1, 0, 0, 1, 0, 0))
    with pytest.raises(ValueError):
        slice_normal((1, 0, 0))


def test_to_hu_and_window_maths():
    stored = np.array([0, 1024, 2048], dtype=np.int16)
    np.testing.assert_array_equal(to_hu(stored, 1.0, -1024.0), [-1024, 0, 1024])
    np.testing.assert_array_equal(to_hu(stored, 0.5, 10.0), [10, 522, 1034])
    hu = np.array([-2000, -1350, -600, 150, 1000], dtype=np.float32)
    windowed = window(hu, center=-600, width=1500)
    assert windowed.dtype == np.float32
    np.testing.assert_allclose(windowed, [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(window(np.array([-975.0]), -600, 1500), [0.25])
    np.testing.assert_array_equal(window_uint8(hu, -600, 1500), [0, 0, 128, 255, 255])
    assert window_uint8(hu, -600, 1500).dtype == np.uint8
    with pytest.raises(ValueError):
        window(hu, 0, 0)


def test_resize_block_mean_when_divisible():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(512, 512)).astype(np.float32)
    small = resize(image, 128)
    assert small.shape == (128, 128) and small.dtype == np.float32
    np.testing.assert_allclose(small[5, 7], image[20:24, 28:32].mean(), rtol=1e-5)
    stack = resize(np.stack([image, image + 1]), 128)
    assert stack.shape == (2, 128, 128)
    np.testing.assert_allclose(stack[1], small + 1, rtol=1e-4, atol=1e-5)


def test_resize_area_and_bilinear():
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(30, 20)).astype(np.float32)
    down = resize(image, 16)  # rows shrink (area), columns grow (bilinear)
    assert down.shape == (16, 16)
    ramp = np.tile(np.arange(16, dtype=np.float32), (16, 1))
    up = resize(ramp, 32)
    assert up.shape == (32, 32)
    np.testing.assert_allclose(up[:, 1:-1], np.tile((np.arange(1, 31) + 0.5) / 2 - 0.5, (32, 1)), atol=1e-5)
    np.testing.assert_allclose(resize(np.full((7, 9), 3.0), 5), 3.0, rtol=1e-6)  # area weights sum to 1
    shrunk = resize(image[:, :15], 7)  # 30×15 → 7×7, both non-divisible
    assert abs(float(shrunk.mean()) - float(image[:, :15].mean())) < 1e-5  # area averaging keeps the mean
    np.testing.assert_array_equal(resize(image, 20).shape, (20, 20))
    with pytest.raises(ValueError):
        resize(np.zeros(5), 2)


def _rounded_reference(stored, slope, intercept):
    return np.clip(np.rint(to_hu(stored, slope, intercept)), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("dtype", ["u1", "i1", "<u2", "<i2", "<u4", "<i4"])
def test_hu_int16_is_the_rounded_float32_formula_byte_for_byte(dtype):
    """Integer arithmetic where float32 is exact (integer slope and intercept, 8/16-bit values), the
    float32 formula elsewhere: the same int16 bytes either way, clipped values and range hints included."""
    from medfake.io.transforms import hu_int16

    info = np.iinfo(np.dtype(dtype))
    rng = np.random.default_rng(1)
    stored = rng.integers(info.min, int(info.max) + 1, size=(7, 9), dtype=np.dtype(dtype))
    stored.flat[:4] = [info.min, info.max, 0, 1]
    ranges = [None]
    if dtype == "<u2":
        ranges.append((0, 4095))  # BitsStored 12, unsigned: what NativePixels.stored_range says
    if dtype == "<i2":
        ranges.append((-2048, 2047))
    for slope in (1, 1.0, 2, -1, 3, 0.5, 1000, 1e-3, 2**23, 0):
        for intercept in (0, -1024, -1024.0, 30000, -40000, 0.5, -1024.25, 2**24):
            for stored_range in ranges:
                values = stored if stored_range is None else np.clip(stored, *stored_range).astype(stored.dtype)
                expected = _rounded_reference(values, slope, intercept).tobytes()
                for scratch in (None, np.empty(values.shape, np.float32)):
                    out = np.empty(values.shape, np.int16)
                    assert hu_int16(values, slope, intercept, out, stored_range=stored_range, scratch=scratch) is out
                    assert out.tobytes() == expected, (slope, intercept, stored_range)
