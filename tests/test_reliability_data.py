"""Issue 11, data: hostile labels, undecodable images, 16-bit images, FIFOs.

Each case asserts the documented behaviour (docs/tutorial.rst, "Bad data")
in bounded time and memory.
"""

import logging
import os
import resource
import subprocess
import sys
import threading
import time

import chainer_finetune  # noqa: F401  (must precede `import chainer`)

import numpy  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from chainer_finetune import data  # noqa: E402
from chainer_finetune.data import load_images  # noqa: E402
from chainer_finetune.data import read_image  # noqa: E402
from chainer_finetune.errors import DataError  # noqa: E402


def _save(path, array, **kwargs):
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _rgb(seed, size=4):
    return numpy.random.RandomState(seed).randint(
        0, 256, (size, size, 3)).astype(numpy.uint8)


# --------------------------------------------------------------------------
# (3) labels are bounded
# --------------------------------------------------------------------------

@pytest.mark.parametrize('label', ['99999999999', '100000', '0' * 3 + '1' +
                                   '0' * 5, '9' * 5000])
def test_huge_list_label_is_refused_without_allocating(tmp_path, label):
    _save(tmp_path / 'a' / '0.jpg', _rgb(0))
    listing = tmp_path / 'list.txt'
    listing.write_text('a/0.jpg 0\na/0.jpg {}\n'.format(label))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_images(str(listing))
    assert time.perf_counter() - start < 5
    # ru_maxrss is in KiB on Linux: less than 100 MB more at the peak.
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 100 * 1024
    message = str(info.value)
    assert '\n' not in message
    assert '{}:2: the label'.format(listing) in message
    assert 'below {}'.format(data.MAX_CLASSES) in message


def test_largest_allowed_label(tmp_path):
    _save(tmp_path / 'a' / '0.png', _rgb(0))
    listing = tmp_path / 'list.txt'
    listing.write_text('a/0.png 0\na/0.png {}\n'.format(data.MAX_CLASSES - 1))
    images = load_images(str(listing))
    assert len(images.class_names) == data.MAX_CLASSES
    assert images.labels.tolist() == [0, data.MAX_CLASSES - 1]


# --------------------------------------------------------------------------
# (7) 16-bit images are scaled, never clipped
# --------------------------------------------------------------------------

def _expected_8bit(values16):
    return numpy.rint(values16.astype(numpy.float64) * 255 / 65535
                      ).astype(numpy.uint8)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = numpy.array([[0, 25, 128, 129, 300], [32767, 32768, 40000,
                                                   65511, 65535]],
                         numpy.uint16)
    path = _save(tmp_path / 'g16.png', values)
    assert Image.open(path).mode.startswith('I')
    got = read_image(path)
    assert got.dtype == numpy.uint8 and got.shape == (2, 5, 3)
    want = _expected_8bit(values)
    for channel in range(3):
        numpy.testing.assert_array_equal(got[:, :, channel], want)
    # The case: 25..65511 used to become 25..255.
    assert got.max() == 255 and got[0, 1, 0] == 0


def test_16bit_pgm_is_scaled_not_clipped(tmp_path):
    values = numpy.array([[300, 65000], [0, 65535]], '>u2')
    path = tmp_path / 'p16.pgm'
    path.write_bytes(b'P5\n2 2\n65535\n' + values.tobytes())
    got = read_image(str(path))
    numpy.testing.assert_array_equal(got[:, :, 0],
                                     _expected_8bit(values.astype(int)))


def test_16bit_every_value_rounds_to_nearest():
    # The scaling itself on every 16-bit value, against float rounding.
    values = numpy.arange(65536, dtype=numpy.uint16).reshape(256, 256)
    img = Image.fromarray(values)
    got = data._to_uint8(img, 'all-values')[:, :, 0]
    numpy.testing.assert_array_equal(got, _expected_8bit(values))


def test_8bit_images_unchanged(tmp_path):
    rgb = _rgb(3, 5)
    gray = rgb[:, :, 1].copy()
    numpy.testing.assert_array_equal(read_image(_save(tmp_path / 'c.png',
                                                      rgb)), rgb)
    numpy.testing.assert_array_equal(
        read_image(_save(tmp_path / 'g.png', gray)),
        numpy.stack([gray] * 3, axis=2))


# --------------------------------------------------------------------------
# Only regular files are opened as images
# --------------------------------------------------------------------------

def _in_thread(function, timeout=10):
    """``function()``'s exception or result; fails if it hangs."""
    outcome = {}

    def target():
        try:
            outcome['value'] = function()
        except BaseException as e:   # noqa: B902  (carried to the test)
            outcome['error'] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), 'hung on a FIFO'
    return outcome


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='no FIFOs here')
def test_fifo_as_image_is_refused_without_hanging(tmp_path):
    fifo = str(tmp_path / 'pipe.png')
    os.mkfifo(fifo)
    outcome = _in_thread(lambda: read_image(fifo))
    error = outcome.get('error')
    assert isinstance(error, DataError), outcome
    assert fifo in str(error) and 'not a regular file' in str(error)


def test_directory_as_image_is_refused(tmp_path):
    with pytest.raises(DataError, match='not a regular file'):
        read_image(str(tmp_path))
