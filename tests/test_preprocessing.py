"""CaffePreprocessor applies Caffe's input conventions exactly."""

import numpy
import pytest

from chainer_finetune.caffe.preprocessing import CaffePreprocessor
from chainer_finetune.caffe.preprocessing import PreprocessingError


def _image(h=6, w=8, seed=0):
    return numpy.random.RandomState(seed).randint(
        0, 256, size=(h, w, 3)).astype(numpy.uint8)


def test_rgb_uint8_to_bgr_chw_minus_channel_mean():
    img = _image()
    x = CaffePreprocessor(mean=(104, 117, 123))(img)
    assert x.shape == (3, 6, 8) and x.dtype == numpy.float32
    # channel 0 of the output is the image's blue channel minus 104
    numpy.testing.assert_array_equal(x[0], img[:, :, 2] - 104.0)
    numpy.testing.assert_array_equal(x[1], img[:, :, 1] - 117.0)
    numpy.testing.assert_array_equal(x[2], img[:, :, 0] - 123.0)


def test_bgr_input_and_float_range_and_scale():
    img = _image()
    bgr = img[:, :, ::-1].astype(numpy.float32) / 255
    x = CaffePreprocessor(mean=(1, 2, 3), scale=0.5, input_range=1.0,
                          channel_order='BGR')(bgr)
    expected = img[:, :, ::-1].transpose(2, 0, 1).astype(numpy.float32)
    expected = (expected - numpy.array([1, 2, 3], 'f')[:, None, None]) * 0.5
    numpy.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-4)


def test_center_crop_crops_mean_image_with_same_offset():
    img = _image(6, 8)
    mean = numpy.arange(3 * 6 * 8, dtype=numpy.float32).reshape(3, 6, 8)
    x = CaffePreprocessor(mean=mean, crop=(4, 4))(img)
    bgr = img[:, :, ::-1].transpose(2, 0, 1).astype(numpy.float32)
    numpy.testing.assert_array_equal(x, (bgr - mean)[:, 1:5, 2:6])


def test_random_crop_and_mirror_match_caffe_data_layer():
    img = _image(6, 8)
    mean = numpy.random.RandomState(1).rand(3, 6, 8).astype(numpy.float32)
    prep = CaffePreprocessor(mean=mean, crop=4, mirror=True)
    seen = set()
    for seed in range(20):
        rng = numpy.random.RandomState(seed)
        x = prep(img, random=True, rng=rng)
        rng = numpy.random.RandomState(seed)
        oh, ow = rng.randint(0, 3), rng.randint(0, 5)
        flip = rng.randint(2)
        bgr = img[:, :, ::-1].transpose(2, 0, 1).astype(numpy.float32)
        # Caffe: subtract the mean at the source position, then mirror.
        ref = (bgr - mean)[:, oh:oh + 4, ow:ow + 4]
        if flip:
            ref = ref[:, :, ::-1]
        numpy.testing.assert_allclose(x, ref, rtol=1e-6)
        seen.add((oh, ow, flip))
    assert len(seen) > 5


def test_grayscale_is_replicated_and_resize_keeps_constant_image():
    gray = numpy.full((5, 7), 200, dtype=numpy.uint8)
    x = CaffePreprocessor(mean=(100, 100, 100), resize=(10, 14))(gray)
    assert x.shape == (3, 10, 14)
    numpy.testing.assert_allclose(x, 100.0, rtol=1e-6)


def test_resize_bilinear_values():
    ramp = numpy.tile(numpy.arange(4, dtype=numpy.float32) * 10,
                      (2, 1))[:, :, None].repeat(3, axis=2)
    x = CaffePreprocessor(resize=(2, 7), input_range=255)(ramp)
    # align_corners bilinear: 0..30 over 7 samples
    numpy.testing.assert_allclose(x[0, 0], numpy.linspace(0, 30, 7),
                                  rtol=1e-5, atol=1e-4)


def test_mean_of_other_size_is_averaged_per_channel():
    img = _image(6, 8)
    mean = numpy.stack([numpy.full((2, 2), v, 'f') for v in (1, 2, 3)])
    x = CaffePreprocessor(mean=mean)(img)
    bgr = img[:, :, ::-1].transpose(2, 0, 1).astype(numpy.float32)
    numpy.testing.assert_array_equal(
        x, bgr - numpy.array([1, 2, 3], 'f')[:, None, None])


@pytest.mark.parametrize('kwargs,image,match', [
    ({'channel_order': 'XYZ'}, None, 'channel_order'),
    ({'mean': numpy.zeros((2, 2))}, None, 'mean'),
    ({'crop': 10}, _image(6, 8), 'crop'),
    ({}, numpy.zeros((4, 4, 2)), 'image'),
    ({'mean': (1, 2)}, _image(), 'channels'),
])
def test_bad_arguments_raise_library_error(kwargs, image, match):
    with pytest.raises(PreprocessingError, match=match):
        prep = CaffePreprocessor(**kwargs)
        prep(image if image is not None else _image())
