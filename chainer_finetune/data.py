"""Labelled image data for fine-tuning: four sources, one :class:`ImageSet`.

:func:`load_images` turns a *spec* into an :class:`ImageSet` (class names,
an int32 label per image, images read on access as ``(H, W, 3)`` uint8 RGB
arrays). Accepted specs:

``'digits'``
    scikit-learn's bundled copy of the UCI handwritten digits: 1797
    grayscale 8x8 images, 10 classes ``'0'``..``'9'``
    (:func:`read_digits_csv`), fetched once from scikit-learn's wheel on
    PyPI (never installed nor imported; see
    :func:`chainer_finetune.hub.fetch_digits`) into the model cache.

``'fashion-mnist'``
    Zalando's Fashion-MNIST: 70000 grayscale 28x28 images, 10 classes, read
    (:func:`read_idx`) from the four standard IDX files (``train-*`` and
    ``t10k-*``, plain or ``.gz``) where Debian's ``dataset-fashion-mnist``
    package installs them, or in ``data_dir``. Nothing is downloaded. The
    60000 training images come first, then the 10000 ``t10k`` ones, whose
    indices are :attr:`ImageSet.test_indices` (the official split).

a directory ``root/<class>/<image>``
    One subdirectory per class (class names sorted, labels in that order;
    hidden entries skipped), holding image files
    (:data:`IMAGE_EXTENSIONS`, any case; others are ignored), decoded by
    :func:`read_image` when accessed.

a list file
    Caffe's ``ImageData`` format: one ``path label`` per line. The line is
    split at its *last* whitespace, so paths may contain spaces; paths are
    relative to ``data_dir`` when given (Caffe's ``root_folder``), else to
    the list file's directory. Blank lines and lines starting with ``#`` are
    skipped. Class names are the label numbers ``'0'`` to ``'<max label>'``;
    labels must be below :data:`MAX_CLASSES`.

:func:`split_per_class` draws a per-class training / held-out split;
:func:`make_dataset` with a :class:`CaffeTransform` makes the Chainer
dataset (an :class:`AugmentedDataset`, whose random crops can also be drawn
from a seed per example)::

    images = load_images('digits')
    train, test = split_per_class(images, n_train=100, n_test=None, seed=0)
    prep = CaffePreprocessor(mean=(104, 117, 123), resize=256, crop=227,
                             mirror=True)
    train_set = make_dataset(train, CaffeTransform(prep, train=True, seed=0))
    test_set = make_dataset(test, CaffeTransform(prep, train=False))

:func:`check_images` decodes every image file once (before training), and
lists all that cannot be decoded in one error, or leaves them out.

Every problem with the data raises :class:`~chainer_finetune.errors.DataError`
naming the file (and line) or class involved.
"""

from __future__ import annotations

import gzip
import io
import logging
import multiprocessing
import os
import sys
import zlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import chainer
import numpy

from chainer_finetune.errors import DataError
from chainer_finetune.files import NotARegularFileError, open_regular

logger = logging.getLogger(__name__)

PathLike = Union[str, 'os.PathLike[str]']

#: Where Debian's and Ubuntu's ``dataset-fashion-mnist`` package installs
#: the Fashion-MNIST IDX files.
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'

#: Fashion-MNIST's class names; index = label.
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress',
                         'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                         'Ankle boot')

#: The digits' class names; index = label.
DIGITS_CLASSES = tuple(str(i) for i in range(10))

#: List-file labels must be below this: class names are made for every
#: label up to the largest, so one mistyped label must not allocate without
#: bound.
MAX_CLASSES = 100_000

#: File name extensions (lowercase) read from class directories.
IMAGE_EXTENSIONS = ('.bmp', '.jpeg', '.jpg', '.pgm', '.png', '.ppm')

#: The forms :func:`load_images` accepts, for error messages.
ACCEPTED_FORMS = (
    "'digits' (scikit-learn's handwritten digits, fetched once from PyPI), "
    "'fashion-mnist' (IDX files in data_dir or {}), a directory "
    'root/<class>/<image files> ({}), or a list file of "path label" lines '
    "(Caffe's ImageData format)".format(
        FASHION_MNIST_DIR, ', '.join('*' + e for e in IMAGE_EXTENSIONS)))

# IDX data type codes: https://yann.lecun.com/exdb/mnist/ (big-endian).
_IDX_TYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4',
              0x0D: '>f4', 0x0E: '>f8'}

# round(v * 255 / 16) for the digits' values 0..16 (halves round up).
_DIGITS_LUT = ((numpy.arange(17) * 255 + 8) // 16).astype(numpy.uint8)


class _ArrayImages:
    """Images held in one uint8 array, ``(N, H, W)`` or ``(N, H, W, 3)``."""

    def __init__(self, array: numpy.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def get(self, i: int) -> numpy.ndarray:
        x = self.array[i]
        if x.ndim == 2:
            # Grayscale is stored once and replicated per access.
            return numpy.repeat(x[:, :, None], 3, axis=2)
        return x.copy()

    def path(self, i: int) -> Optional[str]:
        return None


class _FileImages:
    """Image files, decoded on access."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> numpy.ndarray:
        return read_image(self.paths[i])

    def path(self, i: int) -> Optional[str]:
        return self.paths[i]


_Source = Union[_ArrayImages, _FileImages]


def _open_regular(path: str) -> io.BufferedReader:
    """``path`` opened for reading, if it is a regular file.

    The open does not block (``O_NONBLOCK``), so that a FIFO or a device
    in place of an image is refused instead of waiting forever.

    Raises:
        DataError: ``path`` cannot be opened or is not a regular file.
    """
    try:
        f, _ = open_regular(path)
    except NotARegularFileError as e:
        raise DataError('{}: not a regular file ({}); images must be '
                        'files'.format(path, e.what)) from None
    except OSError as e:
        raise DataError('cannot read {}: {}'.format(path, e.strerror or e)
                        ) from e
    return f


def _to_uint8(img, path: str) -> numpy.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array of a Pillow image of any mode.

    16-bit grayscale (Pillow's ``I;16*`` and ``I`` modes, from 16-bit PNGs
    and PGMs, 0..65535) is scaled to ``round(v * 255 / 65535)``, never
    clipped; a float image must hold values in 0..255.
    """
    if img.mode.startswith('I') or img.mode == 'F':
        values = numpy.asarray(img)
        top = 255 if img.mode == 'F' else 65535
        if values.size and (values.min() < 0 or values.max() > top):
            raise DataError('{}: pixel values {}..{} outside 0..{} (mode {})'
                            .format(path, values.min(), values.max(), top,
                                    img.mode))
        if img.mode == 'F':
            gray = numpy.rint(values).astype(numpy.uint8)
        else:
            gray = _scale_16bit(values)
        return numpy.repeat(gray[:, :, None], 3, axis=2)
    if img.mode != 'RGB':
        img = img.convert('RGB')
    return numpy.array(img, dtype=numpy.uint8)


#: Pillow's raw modes of 16-bit colour PNGs (big-endian samples), each with
#: the raw mode whose unpacker takes the other byte of every sample. Pillow
#: itself keeps only the high byte (``v >> 8``, a floor, not a rounding).
_LOW_BYTE_RAWMODES = {'RGB;16B': 'RGB;16L', 'RGBA;16B': 'RGBA;16L'}

#: EXIF orientation -> the transpose that undoes it (as ImageOps does).
_ORIENTATIONS = {2: 'FLIP_LEFT_RIGHT', 3: 'ROTATE_180', 4: 'FLIP_TOP_BOTTOM',
                 5: 'TRANSPOSE', 6: 'ROTATE_270', 7: 'TRANSVERSE',
                 8: 'ROTATE_90'}


def _scale_16bit(values: numpy.ndarray) -> numpy.ndarray:
    """``round(v * 255 / 65535)`` of 16-bit values, as uint8.

    ``v * 255 / 65535`` is never a half for an integer ``v``: no ties.
    """
    return ((values.astype(numpy.int64) * 255 + 32767) //
            65535).astype(numpy.uint8)


def _wide_colour(f, img) -> Optional[numpy.ndarray]:
    """The exact 8-bit RGB of a 16-bit colour PNG, or None for others.

    Pillow decodes such a file to its high bytes; decoding it a second
    time with the little-endian unpacker yields the low bytes (the PNG
    unfiltering is the same: both raw modes have 48/64 bits per pixel),
    and the two make the 16-bit samples, which are then rounded.
    """
    tile = getattr(img, 'tile', None) or []
    if (len(tile) != 1 or not isinstance(tile[0].args, str)
            or tile[0].args not in _LOW_BYTE_RAWMODES):
        if any(';16' in str(t.args) for t in tile) and img.mode != 'I;16':
            logger.warning('%s: 16-bit colour in a layout read as its high '
                           'bytes (v >> 8, at most 1 below the rounding)',
                           getattr(f, 'name', 'image'))
        return None
    from PIL import Image
    high = numpy.asarray(img.convert(img.mode), dtype=numpy.uint16)
    f.seek(0)
    with Image.open(f) as again:
        again.tile = [again.tile[0]._replace(
            args=_LOW_BYTE_RAWMODES[tile[0].args])]
        low = numpy.asarray(again.convert(again.mode), dtype=numpy.uint16)
    return _scale_16bit((high << 8 | low)[:, :, :3])


def _oriented(rgb: numpy.ndarray, orientation: int) -> numpy.ndarray:
    if orientation not in _ORIENTATIONS:
        return rgb
    from PIL import Image
    method = getattr(Image.Transpose, _ORIENTATIONS[orientation])
    return numpy.asarray(Image.fromarray(rgb).transpose(method))


def read_image(path: PathLike) -> numpy.ndarray:
    """Decodes an image file into an ``(H, W, 3)`` uint8 RGB array.

    The EXIF orientation is applied (as OpenCV's ``imread``, which Caffe
    uses, does); any mode is converted to RGB by Pillow (grayscale
    replicated, alpha dropped, palette expanded). 16-bit images, grayscale
    and colour, are scaled to 8 bits as ``round(v * 255 / 65535)``, never
    clipped nor truncated. Only regular files are opened.

    Raises:
        DataError: The file (named) cannot be opened or is not a regular
            file, cannot be decoded, or holds values outside its range.
    """
    from PIL import Image, UnidentifiedImageError
    path = os.fspath(path)
    with _open_regular(path) as f:
        try:
            with Image.open(f) as img:
                # Before getexif(), which loads the image (and drops its tile).
                rgb = _wide_colour(f, img)
                orientation = img.getexif().get(0x0112, 1)
                if rgb is None:
                    rgb = _to_uint8(img, path)
                return _oriented(rgb, orientation)
        except (OSError, ValueError, SyntaxError, EOFError,
                Image.DecompressionBombError) as e:
            if isinstance(e, DataError):
                raise
            # Pillow's own message would name the descriptor, not the file.
            reason = ('not an image format Pillow reads'
                      if isinstance(e, UnidentifiedImageError) else e)
            raise DataError('{}: cannot decode the image: {}'.format(
                path, reason)) from e


class ImageSet:
    """Labelled images: class names, an int32 label and an image per index.

    Make one with :func:`load_images`, :meth:`from_array` or
    :meth:`from_files`; :meth:`subset` selects images without copying
    them.

    Attributes:
        name: Where the images come from (``'digits'``,
            ``'fashion-mnist'``, the folder or list file given).
        class_names: The class names; index = label.
        labels: int32 ``(N,)``, each in ``[0, len(class_names))``.
        test_indices: Sorted indices (into this set) of the images in an
            official held-out split (Fashion-MNIST's ``t10k``), or None when
            there is none or no image of this set is in it.
    """

    def __init__(self, name: str, class_names: Sequence[str],
                 labels: numpy.ndarray, source: _Source,
                 index: Optional[numpy.ndarray] = None,
                 test_indices: Optional[numpy.ndarray] = None) -> None:
        self.name = str(name)
        self.class_names: List[str] = [str(c) for c in class_names]
        self._source = source
        self._index = (numpy.arange(len(source), dtype=numpy.int64)
                       if index is None
                       else numpy.asarray(index, dtype=numpy.int64))
        labels = numpy.asarray(labels)
        if labels.size and not numpy.issubdtype(labels.dtype, numpy.integer):
            raise DataError('{}: labels must be integers, got {}'.format(
                self.name, labels.dtype))
        if labels.ndim != 1 or len(labels) != len(self._index):
            raise DataError('{}: {} labels for {} images'.format(
                self.name, labels.size, len(self._index)))
        if labels.size and (labels.min() < 0 or
                            labels.max() >= len(self.class_names)):
            raise DataError('{}: labels must lie in [0, {}), got {}..{}'
                            .format(self.name, len(self.class_names),
                                    labels.min(), labels.max()))
        self.labels = labels.astype(numpy.int32)
        if test_indices is not None:
            test_indices = numpy.unique(numpy.asarray(test_indices,
                                                      dtype=numpy.int64))
            if test_indices.size == 0:
                test_indices = None
            elif test_indices[0] < 0 or test_indices[-1] >= len(self):
                raise DataError('{}: test_indices out of range [0, {})'
                                .format(self.name, len(self)))
        self.test_indices: Optional[numpy.ndarray] = test_indices

    @classmethod
    def from_array(cls, images: numpy.ndarray, labels: Sequence[int],
                   class_names: Sequence[str], *, name: str = 'array',
                   test_indices: Optional[Sequence[int]] = None
                   ) -> 'ImageSet':
        """Images held in memory.

        Args:
            images: uint8 ``(N, H, W)`` (grayscale, replicated to RGB on
                access) or ``(N, H, W, 3)`` (RGB). Kept, not copied.
            labels: ``N`` labels in ``[0, len(class_names))``.
            class_names: The class names; index = label.
            name: For messages.
            test_indices: Indices of an official held-out split, if any.
        """
        images = numpy.asarray(images)
        if images.dtype != numpy.uint8 or not (
                images.ndim == 3 or (images.ndim == 4 and
                                     images.shape[3] == 3)):
            raise DataError('{}: images must be uint8 (N, H, W) or '
                            '(N, H, W, 3), got {} {}'.format(
                                name, images.dtype, images.shape))
        return cls(name, class_names, numpy.asarray(labels),
                   _ArrayImages(images), test_indices=test_indices)

    @classmethod
    def from_files(cls, paths: Sequence[PathLike], labels: Sequence[int],
                   class_names: Sequence[str], *, name: str = 'files'
                   ) -> 'ImageSet':
        """Image files, decoded by :func:`read_image` on access."""
        return cls(name, class_names, numpy.asarray(labels, numpy.int64),
                   _FileImages([os.fspath(p) for p in paths]))

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return '<ImageSet {!r}: {} images, {} classes{}>'.format(
            self.name, len(self), len(self.class_names),
            '' if self.test_indices is None
            else ', {} in the official test split'.format(
                len(self.test_indices)))

    def image(self, i: int) -> numpy.ndarray:
        """Image ``i`` as a fresh ``(H, W, 3)`` uint8 RGB array.

        Raises:
            IndexError: ``i`` is out of range.
            DataError: An image file cannot be decoded.
        """
        return self._source.get(int(self._index[i]))

    def path(self, i: int) -> Optional[str]:
        """The file of image ``i``, or None for images held in memory."""
        return self._source.path(int(self._index[i]))

    def counts(self) -> numpy.ndarray:
        """The number of images per class (int64, one per class name)."""
        return numpy.bincount(self.labels, minlength=len(self.class_names))

    def subset(self, indices: Union[Sequence[int], numpy.ndarray]
               ) -> 'ImageSet':
        """The images at ``indices`` (in that order), sharing the storage.

        Args:
            indices: Integer indices into this set (repeats allowed) or a
                boolean mask of length ``len(self)``.

        Returns:
            ImageSet: Same name and class names; :attr:`test_indices`
            remapped to the positions in the subset of images in the
            official test split (None when there are none).
        """
        idx = numpy.asarray(indices)
        if idx.dtype == numpy.bool_:
            if idx.shape != (len(self),):
                raise IndexError('a boolean mask needs shape ({},), got {}'
                                 .format(len(self), idx.shape))
            idx = numpy.flatnonzero(idx)
        if idx.size == 0:
            idx = idx.astype(numpy.int64).reshape(0)
        if idx.ndim != 1 or not numpy.issubdtype(idx.dtype, numpy.integer):
            raise TypeError('subset indices must be a 1-D sequence of '
                            'integers, got {} {}'.format(idx.dtype,
                                                         idx.shape))
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError('subset index out of range [0, {}): {}..{}'
                             .format(len(self), idx.min(), idx.max()))
        test = None
        if self.test_indices is not None:
            test = numpy.flatnonzero(numpy.isin(idx, self.test_indices))
        return ImageSet(self.name, self.class_names, self.labels[idx],
                        self._source, self._index[idx], test)

    def as_dataset(self) -> 'ImageDataset':
        """A Chainer dataset whose example ``i`` is ``(image(i), label)``."""
        return ImageDataset(self)


class ImageDataset(chainer.dataset.DatasetMixin):
    """An :class:`ImageSet` as a Chainer dataset.

    Example ``i`` is ``(images.image(i), numpy.int32(images.labels[i]))``;
    slices and index lists work as for any ``DatasetMixin``.
    """

    def __init__(self, images: ImageSet) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def get_example(self, i: int) -> Tuple[numpy.ndarray, numpy.int32]:
        return self.images.image(i), numpy.int32(self.images.labels[i])


def _decode_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be read as an image (its one-line
    :class:`DataError` message), or None when it can."""
    try:
        read_image(path)
    except DataError as e:
        return str(e)
    return None


def _show_progress(done: int, total: int) -> None:
    sys.stderr.write('\rchecking images: {}/{}'.format(done, total))
    if done == total:
        sys.stderr.write('\n')
    sys.stderr.flush()


def find_bad_images(images: ImageSet, processes: int = 0,
                    progress: Optional[bool] = None
                    ) -> List[Tuple[str, str]]:
    """Decodes every image file of ``images`` once; lists those that fail.

    Images held in memory need no check. Each file is decoded as
    :func:`read_image` does, once even when it appears several times.

    Args:
        images: The image set.
        processes: Worker processes decoding in parallel (0: in this
            process).
        progress: Show a progress line on stderr; None: when stderr is a
            terminal.

    Returns:
        list: ``(path, message)`` of each file that cannot be decoded, in
        the set's order; the message names the file and the reason.
    """
    paths = list(dict.fromkeys(p for p in (images.path(i)
                                           for i in range(len(images)))
                               if p is not None))
    if progress is None:
        progress = sys.stderr.isatty()
    problems: List[Optional[str]] = []
    pool = multiprocessing.Pool(processes) if processes > 0 and \
        len(paths) > 1 else None
    try:
        results = (pool.imap(_decode_problem, paths, chunksize=16)
                   if pool is not None else map(_decode_problem, paths))
        for problem in results:
            problems.append(problem)
            if progress and (len(problems) % 50 == 0 or
                             len(problems) == len(paths)):
                _show_progress(len(problems), len(paths))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return [(path, problem) for path, problem in zip(paths, problems)
            if problem is not None]


def check_images(images: ImageSet, processes: int = 0,
                 skip_bad: bool = False,
                 progress: Optional[bool] = None) -> ImageSet:
    """``images`` once every file has been decoded (:func:`find_bad_images`).

    Call it before training, so that a bad file fails the run at once, not
    when a batch first reaches it.

    Args:
        images: The image set.
        processes: Worker processes decoding in parallel (0: none).
        skip_bad: Drop the images that cannot be decoded, with a warning
            that lists them, instead of raising.
        progress: Show a progress line on stderr; None: on a terminal.

    Returns:
        ImageSet: ``images`` itself, or the subset of the good ones when
        ``skip_bad``.

    Raises:
        DataError: Some files cannot be decoded (all listed, each with its
            reason), and ``skip_bad`` is false; or no image is left.
    """
    bad = find_bad_images(images, processes, progress)
    if not bad:
        return images
    listing = '; '.join(message for _, message in bad)
    if not skip_bad:
        raise DataError('{}: {} image file{} cannot be decoded (pass '
                        'skip_bad=True, CLI: --skip-bad-images, to skip '
                        'them): {}'.format(images.name, len(bad),
                                           '' if len(bad) == 1 else 's',
                                           listing))
    bad_paths = {path for path, _ in bad}
    keep = numpy.array([images.path(i) not in bad_paths
                        for i in range(len(images))], dtype=bool)
    if not keep.any():
        raise DataError('{}: no image can be decoded: {}'.format(
            images.name, listing))
    logger.warning('%s: skipping %d image file%s that cannot be decoded: %s',
                   images.name, len(bad), '' if len(bad) == 1 else 's',
                   listing)
    return images.subset(keep)


def _read_bytes(path: str) -> bytes:
    """A file's contents, gunzipped when it starts with gzip's magic."""
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise DataError('cannot read {}: {}'.format(path, e)) from e
    if raw[:2] != b'\x1f\x8b':
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError('{}: corrupt or truncated gzip data: {}'.format(
            path, e)) from e


def _parse_idx(data: bytes, path: str) -> numpy.ndarray:
    """The array in IDX bytes (a read-only view when no conversion)."""
    if len(data) < 4:
        raise DataError('{}: truncated IDX file: {} bytes, no header'.format(
            path, len(data)))
    zero, type_code, ndim = data[:2], data[2], data[3]
    if zero != b'\x00\x00' or type_code not in _IDX_TYPES or ndim == 0:
        raise DataError('{}: not an IDX file: magic number 0x{} (expected '
                        '0x0000, a type code among {} and at least one '
                        'dimension)'.format(
                            path, data[:4].hex(),
                            ', '.join('0x{:02x}'.format(t)
                                      for t in sorted(_IDX_TYPES))))
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError('{}: truncated IDX file: {} bytes, the header of a '
                        '{}-dimensional array needs {}'.format(
                            path, len(data), ndim, header))
    dims = tuple(int(d) for d in numpy.frombuffer(data, '>u4', ndim, 4))
    dtype = numpy.dtype(_IDX_TYPES[type_code])
    expected = header + int(numpy.prod(dims, dtype=numpy.int64)) * \
        dtype.itemsize
    if len(data) != expected:
        raise DataError('{}: {} IDX file: dimensions {} of {} need {} bytes, '
                        'the file has {}'.format(
                            path, 'truncated' if len(data) < expected
                            else 'oversized', 'x'.join(map(str, dims)),
                            dtype.name, expected, len(data)))
    array = numpy.frombuffer(data, dtype, offset=header).reshape(dims)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder('='))
    return array


def read_idx(path: PathLike) -> numpy.ndarray:
    """Reads an IDX file (MNIST's format), plain or gzip-compressed.

    The header is checked strictly: magic number (two zero bytes, a known
    type code, the number of dimensions), and the file size must be exactly
    what the dimensions call for.

    Args:
        path: The file.

    Returns:
        numpy.ndarray: A writable native-endian array of the file's type
        (uint8 for ``0x08``) and dimensions.

    Raises:
        DataError: The file (named) is unreadable, no IDX file, truncated
            or too long.
    """
    path = os.fspath(path)
    return numpy.array(_parse_idx(_read_bytes(path), path))


def _find_file(directory: str, stem: str) -> Optional[str]:
    # The standard names, gzipped or not; MNIST's own archives unpacked on
    # some systems use a dot before "idx" instead.
    dotted = stem.replace('-idx', '.idx')
    for name in (stem, stem + '.gz', dotted, dotted + '.gz'):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _load_fashion_mnist(data_dir: Optional[PathLike]) -> ImageSet:
    directory = os.fspath(data_dir) if data_dir is not None \
        else FASHION_MNIST_DIR
    parts = [('train', 'train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
             ('t10k', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')]
    found: Dict[str, Optional[str]] = {
        stem: _find_file(directory, stem)
        for _, images, labels in parts for stem in (images, labels)}
    missing = [stem for stem, path in found.items() if path is None]
    if missing:
        raise DataError(
            'Fashion-MNIST not found: {} lacks {} (plain or .gz). Install '
            "Debian's or Ubuntu's package (apt install dataset-fashion-mnist"
            ', files in {}), or download the four IDX files from '
            'https://github.com/zalandoresearch/fashion-mnist and pass their '
            'directory as data_dir (--data-dir)'.format(
                directory, ', '.join(missing), FASHION_MNIST_DIR))
    image_parts, label_parts = [], []
    for part, images_stem, labels_stem in parts:
        images_path, labels_path = found[images_stem], found[labels_stem]
        images = _parse_idx(_read_bytes(images_path), images_path)
        labels = _parse_idx(_read_bytes(labels_path), labels_path)
        if images.dtype != numpy.uint8 or images.ndim != 3:
            raise DataError('{}: expected uint8 images (N, H, W), got {} {}'
                            .format(images_path, images.dtype, images.shape))
        if labels.dtype != numpy.uint8 or labels.ndim != 1:
            raise DataError('{}: expected uint8 labels (N,), got {} {}'
                            .format(labels_path, labels.dtype, labels.shape))
        if len(images) != len(labels):
            raise DataError('{} holds {} images but {} holds {} labels'
                            .format(images_path, len(images), labels_path,
                                    len(labels)))
        if image_parts and images.shape[1:] != image_parts[0].shape[1:]:
            raise DataError('{}: images of {}x{}, the training images are '
                            '{}x{}'.format(images_path, *images.shape[1:],
                                           *image_parts[0].shape[1:]))
        if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise DataError('{}: label {} out of range 0..{}'.format(
                labels_path, labels.max(), len(FASHION_MNIST_CLASSES) - 1))
        image_parts.append(images)
        label_parts.append(labels)
    n_train = len(image_parts[0])
    images = numpy.concatenate(image_parts)
    labels = numpy.concatenate(label_parts).astype(numpy.int32)
    test = numpy.arange(n_train, len(images), dtype=numpy.int64)
    logger.info('fashion-mnist: %d training and %d test images %dx%d from %s',
                n_train, len(test), images.shape[1], images.shape[2],
                directory)
    return ImageSet.from_array(images, labels, FASHION_MNIST_CLASSES,
                               name='fashion-mnist', test_indices=test)


def read_digits_csv(path: PathLike) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Reads scikit-learn's ``digits.csv.gz`` (or a plain ``.csv``).

    Each row holds 64 pixel values 0..16 (an 8x8 image, row by row) and the
    label 0..9.

    Returns:
        tuple: ``(images, labels)``: uint8 ``(N, 8, 8)`` scaled to 0..255
        (``round(v * 255 / 16)``) and int32 ``(N,)``.

    Raises:
        DataError: The file is unreadable or not in that format.
    """
    path = os.fspath(path)
    try:
        text = _read_bytes(path).decode('ascii')
        table = numpy.loadtxt(io.StringIO(text), delimiter=',',
                              dtype=numpy.float64, ndmin=2)
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError('{}: not a CSV table of numbers: {}'.format(
            path, e)) from e
    if table.shape[0] == 0 or table.shape[1] != 65:
        raise DataError('{}: expected rows of 65 values (64 pixels and the '
                        'label), got a table of {}'.format(path, table.shape))
    if not numpy.array_equal(table, numpy.round(table)):
        raise DataError('{}: values must be integers'.format(path))
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16:
        raise DataError('{}: pixel values must lie in 0..16, got {:g}..{:g}'
                        .format(path, pixels.min(), pixels.max()))
    if labels.min() < 0 or labels.max() > 9:
        raise DataError('{}: labels must lie in 0..9, got {:g}..{:g}'.format(
            path, labels.min(), labels.max()))
    images = _DIGITS_LUT[pixels.astype(numpy.intp)].reshape(-1, 8, 8)
    return images, labels.astype(numpy.int32)


def _load_digits(data_dir: Optional[PathLike],
                 cache_dir: Optional[PathLike],
                 pip_args: Optional[List[str]]) -> ImageSet:
    if data_dir is not None:
        path = os.path.join(os.fspath(data_dir), 'digits.csv.gz')
        if not os.path.isfile(path):
            raise DataError(
                '{} not found; without data_dir, the digits are fetched from '
                "scikit-learn's wheel on PyPI".format(path))
    else:
        from chainer_finetune import hub
        path = hub.fetch_digits(cache_dir, pip_args=pip_args)
    images, labels = read_digits_csv(path)
    logger.info('digits: %d images from %s', len(images), path)
    return ImageSet.from_array(images, labels, DIGITS_CLASSES, name='digits')


def _load_folder(root: str) -> ImageSet:
    try:
        classes = sorted(e.name for e in os.scandir(root)
                         if e.is_dir() and not e.name.startswith('.'))
    except OSError as e:
        raise DataError('cannot list {}: {}'.format(root, e)) from e
    if not classes:
        raise DataError('{} holds no class directories; expected '
                        'root/<class>/<image files>'.format(root))
    paths: List[str] = []
    labels: List[int] = []
    for label, name in enumerate(classes):
        directory = os.path.join(root, name)
        try:
            files = sorted(
                e.name for e in os.scandir(directory)
                if not e.name.startswith('.') and e.is_file() and
                os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
        except OSError as e:
            raise DataError('cannot list {}: {}'.format(directory, e)) from e
        if not files:
            logger.warning('%s: class %r holds no images', root, name)
        paths.extend(os.path.join(directory, f) for f in files)
        labels.extend([label] * len(files))
    if not paths:
        raise DataError('{}: no image files ({}) in its class directories '
                        '{}'.format(root, ', '.join(IMAGE_EXTENSIONS),
                                    ', '.join(classes)))
    logger.info('%s: %d images in %d classes', root, len(paths), len(classes))
    return ImageSet.from_files(paths, labels, classes, name=root)


def _load_list(list_file: str, data_dir: Optional[PathLike]) -> ImageSet:
    base = os.fspath(data_dir) if data_dir is not None \
        else os.path.dirname(os.path.abspath(list_file))
    paths: List[str] = []
    labels: List[int] = []
    try:
        with open(list_file, encoding='utf-8',
                  errors='surrogateescape') as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataError('cannot read {}: {}'.format(list_file, e)) from e
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith('#'):
            continue
        where = '{}:{}'.format(list_file, lineno)
        fields = line.rsplit(None, 1)
        if len(fields) != 2:
            raise DataError('{}: expected "path label", got {!r}'.format(
                where, line))
        name, label = fields
        if not (label.isascii() and label.isdigit()):
            raise DataError('{}: the label {!r} is not a non-negative '
                            'integer'.format(where, label))
        # Digits counted before int(): a 5000-digit label is refused too.
        if (len(label.lstrip('0')) > len(str(MAX_CLASSES - 1)) or
                int(label) >= MAX_CLASSES):
            raise DataError('{}: the label {} is too large: labels must be '
                            'below {} (MAX_CLASSES)'.format(
                                where, label, MAX_CLASSES))
        path = os.path.join(base, name)
        if not os.path.isfile(path):
            raise DataError('{}: no such image file: {}'.format(where, path))
        paths.append(path)
        labels.append(int(label))
    if not paths:
        raise DataError('{}: no "path label" lines'.format(list_file))
    n_classes = max(labels) + 1
    logger.info('%s: %d images, labels 0..%d', list_file, len(paths),
                n_classes - 1)
    return ImageSet.from_files(paths, labels,
                               [str(i) for i in range(n_classes)],
                               name=list_file)


def load_images(spec: PathLike, data_dir: Optional[PathLike] = None, *,
                cache_dir: Optional[PathLike] = None,
                pip_args: Optional[List[str]] = None) -> ImageSet:
    """Loads labelled images; see the module docstring for the forms.

    Args:
        spec: ``'digits'``, ``'fashion-mnist'``, a directory
            ``root/<class>/<images>`` or a list file of ``path label``
            lines. The two names take precedence over files of that name
            (write ``./digits`` for a directory called ``digits``).
        data_dir: For ``'fashion-mnist'``, the directory of the IDX files
            (default ``/usr/share/datasets/fashion-mnist``); for
            ``'digits'``, a directory holding ``digits.csv.gz`` (else it is
            fetched); for a list file, the directory its paths are relative
            to (default: the list file's). Unused for a directory.
        cache_dir: For ``'digits'``, the fetch cache (default
            :func:`chainer_finetune.hub.default_cache_dir`).
        pip_args: For ``'digits'``, extra ``pip download`` arguments.

    Returns:
        ImageSet: Images are read (files decoded) on access.

    Raises:
        DataError: Unknown spec, missing or malformed files (the message
            names them, with the line for a list file).
        chainer_finetune.errors.ModelFetchError: The digits could not be
            fetched (PyPI unreachable the first time).
    """
    text = os.fspath(spec)
    if text == 'digits':
        return _load_digits(data_dir, cache_dir, pip_args)
    if text == 'fashion-mnist':
        return _load_fashion_mnist(data_dir)
    if os.path.isdir(text):
        if data_dir is not None:
            logger.warning('data_dir %s is not used for the image directory '
                           '%s', data_dir, text)
        return _load_folder(text)
    if os.path.isfile(text):
        return _load_list(text, data_dir)
    raise DataError('cannot load images from {!r}: {}. Accepted: {}'.format(
        text, 'not a regular file or directory' if os.path.exists(text)
        else 'no such name, file or directory', ACCEPTED_FORMS))


def _too_few(images: ImageSet, label: int, have: int, kind: str,
             wanted: str) -> DataError:
    return DataError('{}: class {!r} (label {}) has {} {}image{}, {} wanted'
                     .format(images.name, images.class_names[label], label,
                             have, kind, '' if have == 1 else 's', wanted))


def split_per_class(images: ImageSet, n_train: Optional[int],
                    n_test: Optional[int], seed: int = 0
                    ) -> Tuple[ImageSet, ImageSet]:
    """Splits ``images`` into training and held-out parts, per class.

    For each class, its images are shuffled (deterministically for a
    ``seed``); the held-out images are the first ``n_test`` of them and the
    training images the next ``n_train`` (None: all remaining), so the
    held-out part is the same for any ``n_train``, and training parts for
    growing ``n_train`` contain each other. With ``n_test=None`` the
    training images are the first ``n_train`` and the held-out ones the
    rest. When ``images.test_indices`` exists (Fashion-MNIST), held-out
    images are drawn only from that official test split and training images
    only from the rest (shuffled separately); both None then take each part
    whole.

    Args:
        images: The labelled images.
        n_train: Training images per class; None for all remaining.
        n_test: Held-out images per class; None for all remaining (all of
            the official test split when there is one).
        seed: Seed of the shuffle.

    Returns:
        tuple: ``(train, held_out)`` :class:`ImageSet` subsets, indices in
        increasing order in each.

    Raises:
        DataError: A class (named) has fewer images than asked for, or,
            without an official split, both counts are None.
        ValueError: A negative count.
    """
    for what, n in (('n_train', n_train), ('n_test', n_test)):
        if n is not None and (not isinstance(n, (int, numpy.integer)) or
                              n < 0):
            raise ValueError('{} must be None or a non-negative integer, '
                             'not {!r}'.format(what, n))
    official = images.test_indices
    if official is None and n_train is None and n_test is None:
        raise DataError('{}: give n_train or n_test (or both); with neither '
                        'and no official test split, nothing is held out'
                        .format(images.name))
    rng = numpy.random.RandomState(seed)
    is_test = numpy.zeros(len(images), dtype=bool)
    if official is not None:
        is_test[official] = True
    train_parts, test_parts = [], []
    for label in range(len(images.class_names)):
        members = numpy.flatnonzero(images.labels == label)
        if official is None:
            pool = rng.permutation(members)
            wanted = (n_test or 0) + (n_train or 0)
            if wanted > len(pool):
                raise _too_few(images, label, len(pool), '', '{} ({})'.format(
                    wanted, ' + '.join(
                        '{} {}'.format(n, what) for n, what in
                        ((n_test, 'held-out'), (n_train, 'training'))
                        if n is not None)))
            if n_test is not None:
                held, train = pool[:n_test], pool[n_test:][:n_train]
            else:
                train, held = pool[:n_train], pool[n_train:]
        else:
            train = rng.permutation(members[~is_test[members]])
            held = rng.permutation(members[is_test[members]])
            if n_train is not None and n_train > len(train):
                raise _too_few(images, label, len(train), 'non-test ',
                               '{} training'.format(n_train))
            if n_test is not None and n_test > len(held):
                raise _too_few(images, label, len(held), 'official test ',
                               '{} held-out'.format(n_test))
            train, held = train[:n_train], held[:n_test]
        train_parts.append(train)
        test_parts.append(held)
    empty = [numpy.zeros(0, numpy.int64)]
    train_idx = numpy.sort(numpy.concatenate(train_parts + empty))
    test_idx = numpy.sort(numpy.concatenate(test_parts + empty))
    logger.info('%s: split (seed %d) into %d training and %d held-out images',
                images.name, seed, len(train_idx), len(test_idx))
    return images.subset(train_idx), images.subset(test_idx)


class CaffeTransform:
    """Preprocesses ``(image, label)`` examples for a Caffe model (the
    transform of :func:`make_dataset`).

    Args:
        preprocessor: A
            :class:`~chainer_finetune.caffe.preprocessing.CaffePreprocessor`
            (resize, crop, mirror, mean, scale as Caffe's data layer).
        train: True: random crop (and mirror, when the preprocessor has
            ``mirror=True``) drawn from this transform's own random state;
            False: the centre crop, no mirror.
        seed: Seed of that random state: the same seed gives the same
            sequence of crops. None seeds it from the OS, anew in each
            process that uses it (so that the workers of a
            ``MultiprocessIterator`` do not repeat each other's crops).
    """

    def __init__(self, preprocessor, train: bool,
                 seed: Optional[int] = None) -> None:
        self.preprocessor = preprocessor
        self.train = bool(train)
        self.seed = seed
        self.rng = numpy.random.RandomState(seed)
        self._pid = os.getpid()

    def __call__(self, example: Tuple[numpy.ndarray, int],
                 rng: Optional[numpy.random.RandomState] = None
                 ) -> Tuple[numpy.ndarray, numpy.int32]:
        """Returns ``(float32 (3, h, w) BGR array, int32 label)``.

        Args:
            example: ``(image, label)``.
            rng: The random state of this example's crop and mirror
                (training mode); None: the transform's own sequential one.
        """
        image, label = example
        if not self.train:
            return self.preprocessor(image, random=False), numpy.int32(label)
        if rng is None:
            if self.seed is None and os.getpid() != self._pid:
                self.rng = numpy.random.RandomState()
                self._pid = os.getpid()
            rng = self.rng
        return (self.preprocessor(image, random=True, rng=rng),
                numpy.int32(label))


class AugmentedDataset(chainer.datasets.TransformDataset):
    """Examples ``transform(dataset[i])`` whose random augmentation can also
    be a function of a seed given per example.

    ``dataset[i]`` (``get_example``) works as Chainer's TransformDataset:
    the transform draws from its own random state, so an example's crop
    depends on how many were drawn before it in this process.
    :meth:`example` draws from ``RandomState(seed)`` instead: the crop then
    depends on the seed alone, wherever and in whichever process the
    example is loaded. :class:`~chainer_finetune.distributed.GlobalBatchSlice`
    gives every example of every global batch a seed of its own, so that one
    process and N processes, and a run resumed from a checkpoint, crop each
    example alike.

    Args:
        dataset: The examples, e.g. :meth:`ImageSet.as_dataset`.
        transform: Called as ``transform(example)`` and
            ``transform(example, rng=random_state)`` (a
            :class:`CaffeTransform`).
    """

    def __init__(self, dataset, transform: Callable[..., object]) -> None:
        super().__init__(dataset, transform)
        self.dataset = dataset
        self.transform = transform

    def example(self, i: int, seed: int) -> object:
        """Example ``i`` with its augmentation drawn from
        ``numpy.random.RandomState(seed)``."""
        return self.transform(self.dataset[i],
                              rng=numpy.random.RandomState(seed))


def make_dataset(images: ImageSet,
                 transform: Callable[..., object]) -> AugmentedDataset:
    """``images`` as a Chainer dataset of ``transform((image, label))``
    (an :class:`AugmentedDataset`: its :meth:`~AugmentedDataset.example`
    takes a seed per example)."""
    return AugmentedDataset(images.as_dataset(), transform)


__all__ = ['ACCEPTED_FORMS', 'AugmentedDataset', 'CaffeTransform',
           'DIGITS_CLASSES', 'check_images', 'find_bad_images',
           'FASHION_MNIST_CLASSES', 'FASHION_MNIST_DIR', 'IMAGE_EXTENSIONS',
           'ImageDataset', 'ImageSet', 'MAX_CLASSES', 'load_images',
           'make_dataset', 'read_digits_csv', 'read_idx', 'read_image',
           'split_per_class']
