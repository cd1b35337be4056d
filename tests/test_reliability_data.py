"""Issue 11, data: hostile labels, undecodable images, 16-bit images, FIFOs.

Each case asserts the documented behaviour (docs/tutorial.rst, "Bad data")
in bounded time and memory.
"""

import logging
import os
import resource
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


@pytest.mark.parametrize('channels', [3, 4])
def test_16bit_colour_png_is_rounded_not_truncated(tmp_path, channels):
    # Pillow alone keeps the high byte (v >> 8): 257 -> 1 where the
    # rounding gives 1, but 32768 -> 128 (rounds to 128) and 65280 -> 255
    # (rounds to 254): compare every value with float rounding.
    cv2 = pytest.importorskip('cv2')
    rng = numpy.random.RandomState(channels)
    values = rng.randint(0, 65536, (23, 29, channels)).astype(numpy.uint16)
    values[0, 0, :3] = [65280, 32767, 127]
    path = str(tmp_path / 'c16.png')
    assert cv2.imwrite(path, values[:, :, [2, 1, 0, 3][:channels]])
    got = read_image(path)
    assert got.shape == (23, 29, 3)
    numpy.testing.assert_array_equal(got, _expected_8bit(values[:, :, :3]))
    # What Pillow alone would give differs: the test can tell them apart.
    assert (numpy.asarray(Image.open(path).convert('RGB')) != got).any()


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


# --------------------------------------------------------------------------
# (4) bad images are found before training, all together
# --------------------------------------------------------------------------

def _bad_folder(root, per_class=3):
    """root/<a|b>/*.png, and two files that cannot be decoded."""
    for c, name in enumerate('ab'):
        for i in range(per_class):
            _save(root / name / '{}.png'.format(i), _rgb(10 * c + i, 16))
    garbage = root / 'a' / 'garbage.png'
    garbage.write_bytes(b'\x89PNG\r\n\x1a\n but not really')
    truncated = root / 'b' / 'truncated.jpg'
    _save(truncated, _rgb(99, 64), quality=95)
    truncated.write_bytes(truncated.read_bytes()[:200])
    return str(garbage), str(truncated)


@pytest.mark.parametrize('processes', [0, 2])
def test_bad_images_are_listed_together(tmp_path, processes):
    bad = _bad_folder(tmp_path / 'imgs')
    images = load_images(str(tmp_path / 'imgs'))
    with pytest.raises(DataError) as info:
        data.check_images(images, processes=processes, progress=False)
    message = str(info.value)
    assert '\n' not in message
    assert '2 image files cannot be decoded' in message
    assert '--skip-bad-images' in message
    for path in bad:
        assert '{}: cannot decode the image'.format(path) in message
    assert 'not an image format Pillow reads' in message


@pytest.mark.parametrize('processes', [0, 2])
def test_skip_bad_images_warns_with_the_list(tmp_path, caplog, processes):
    bad = _bad_folder(tmp_path / 'imgs')
    images = load_images(str(tmp_path / 'imgs'))
    with caplog.at_level(logging.WARNING, logger='chainer_finetune.data'):
        good = data.check_images(images, processes=processes, skip_bad=True,
                                 progress=False)
    assert len(images) == 8 and len(good) == 6
    assert not set(bad) & {good.path(i) for i in range(len(good))}
    assert good.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert 'skipping 2 image files' in caplog.text
    for path in bad:
        assert path in caplog.text


def test_check_shows_progress_and_passes_good_sets(tmp_path, capsys):
    for i in range(3):
        _save(tmp_path / 'imgs' / 'k' / '{}.png'.format(i), _rgb(i))
    images = load_images(str(tmp_path / 'imgs'))
    assert data.check_images(images, progress=True) is images
    assert 'checking images: 3/3' in capsys.readouterr().err
    in_memory = data.ImageSet.from_array(
        numpy.zeros((2, 2, 2), numpy.uint8), [0, 1], ['x', 'y'])
    assert data.find_bad_images(in_memory, processes=2) == []


def test_worker_errors_come_back_as_the_same_error(tmp_path):
    from chainer_finetune.finetune.datasets import make_iterator
    garbage, _ = _bad_folder(tmp_path / 'imgs')
    images = load_images(str(tmp_path / 'imgs'))
    dataset = images.as_dataset()
    iterator = make_iterator(dataset, 8, False, 2, 0)
    try:
        with pytest.raises(DataError) as info:
            next(iterator)
    finally:
        iterator.finalize()
    assert str(info.value).startswith(garbage + ': cannot decode')
    # Good examples still pass through the workers unchanged.
    good = images.subset([0, 1])
    iterator = make_iterator(good.as_dataset(), 2, False, 2, 0)
    try:
        batch = next(iterator)
    finally:
        iterator.finalize()
    numpy.testing.assert_array_equal(batch[1][0], good.image(1))


# --------------------------------------------------------------------------
# The fine-tuning job: the check runs before training
# --------------------------------------------------------------------------

def _small_net(directory):
    from chainer_finetune.caffe.writer import NetWriter
    rng = numpy.random.RandomState(0)
    w = NetWriter('tiny')
    w.input('data', (1, 3, 16, 16))
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[rng.randn(4, 3, 3, 3) * 0.2, rng.randn(4) * 0.1])
    w.layer('pool', 'Pooling', 'conv1', 'pool',
            params={'pooling_param': {'pool': 'AVE', 'global_pooling': True}})
    w.layer('fc', 'InnerProduct', 'pool', 'fc',
            params={'inner_product_param': {'num_output': 5}},
            blobs=[rng.randn(5, 4) * 0.3, rng.randn(5) * 0.1])
    model = os.path.join(directory, 'tiny.caffemodel')
    prototxt = os.path.join(directory, 'tiny.prototxt')
    w.write_caffemodel(model)
    w.write_prototxt(prototxt)
    return model, prototxt


@pytest.fixture
def job(tmp_path, monkeypatch):
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(tmp_path / 'cache'))
    model, prototxt = _small_net(str(tmp_path))
    return ['finetune', '--caffemodel', model, '--prototxt', prototxt,
            '--input-size', '16', '--epochs', '1', '--batchsize', '2',
            '--train-per-class', '2', '--test-per-class', '1']


def test_finetune_stops_before_training_on_bad_images(tmp_path, job,
                                                      capsys):
    from chainer_finetune import cli
    bad = _bad_folder(tmp_path / 'imgs')
    out = tmp_path / 'out'
    rc = cli.main(job + ['--data', str(tmp_path / 'imgs'), '--out',
                         str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in err, err
    assert all(path in lines[0] for path in bad)
    # Nothing was trained.
    assert not (out / 'pretrained').exists()


def test_finetune_skip_bad_images(tmp_path, job, capsys, caplog):
    from chainer_finetune import cli
    bad = _bad_folder(tmp_path / 'imgs')
    with caplog.at_level(logging.WARNING, logger='chainer_finetune.data'):
        rc = cli.main(job + ['--data', str(tmp_path / 'imgs'), '--out',
                             str(tmp_path / 'out'), '--skip-bad-images',
                             '--loaderjob', '2'])
    assert rc == 0, capsys.readouterr().err
    assert 'skipping 2 image files' in caplog.text
    assert all(path in caplog.text for path in bad)
    assert (tmp_path / 'out' / 'pretrained' / 'best_model.npz').is_file()


def test_one_class_data_set_is_an_error(tmp_path, job, capsys):
    from chainer_finetune import cli
    from chainer_finetune import finetune
    for i in range(4):
        _save(tmp_path / 'imgs' / 'only' / '{}.png'.format(i), _rgb(i, 16))
    config = finetune.FinetuneConfig(data=str(tmp_path / 'imgs'))
    with pytest.raises(DataError, match=r"only one class has images "
                                        r"\('only', 4 images\)"):
        finetune.datasets.load_split(config)
    listing = tmp_path / 'list.txt'
    listing.write_text('imgs/only/0.png 3\nimgs/only/1.png 3\n')
    rc = cli.main(job + ['--data', str(listing), '--out',
                         str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert rc == 2 and "only one class has images ('3', 2 images)" in err
    assert not (tmp_path / 'out' / 'pretrained').exists()
