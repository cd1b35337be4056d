"""Caffe's input conventions: BGR, CHW, 0-255 minus a mean, then a scale.

Caffe Model Zoo models were trained on ``(C, H, W)`` images in **BGR**
order with values in 0-255, the training-set mean subtracted and optionally
multiplied by ``transform_param.scale``; feeding RGB, 0-1 values or no mean
gives a network that runs but answers wrongly. :class:`CaffePreprocessor`
applies those conventions to ordinary images (examples in docs/loading.rst,
mean files in docs/pitfalls.rst)::

    prep = CaffePreprocessor(mean=load_mean('mean.binaryproto'),
                             resize=(256, 256), crop=227)
    x = prep(rgb_uint8_image)                            # (3, 227, 227) BGR
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple, Union

import chainer.functions as F
import numpy

from chainer_finetune.errors import PreprocessingError

logger = logging.getLogger(__name__)

Size = Union[int, Tuple[int, int]]


def _pair(value: Size) -> Tuple[int, int]:
    if isinstance(value, (int, numpy.integer)):
        return int(value), int(value)
    h, w = value
    return int(h), int(w)


class CaffePreprocessor:
    """Turns images into the input a Caffe model expects.

    Steps, in Caffe's order: grayscale to 3 channels; scale values to 0-255
    (``input_range``); resize (bilinear); RGB to BGR; HWC to CHW; crop
    (centre, or random with ``random=True``); mirror (``random=True`` and
    ``mirror``); subtract the mean; multiply by ``scale``.

    Args:
        mean: None, a per-channel mean (length C, in the network's channel
            order, i.e. BGR), or a mean image ``(C, H, W)`` as returned by
            :func:`load_mean`. A mean image the size of the resized image is
            cropped together with it, one the size of the crop is used as
            is, and any other size is averaged per channel.
        resize: ``(height, width)`` (or one int) to resize to first; None
            keeps the image size.
        crop: Crop size (int or ``(height, width)``); None for no crop.
        scale: Multiplier applied after mean subtraction
            (``transform_param.scale``; e.g. 0.017 for some models).
        input_range: The value range of the images given: 255 for uint8
            images (default), 1.0 for float images in [0, 1].
        channel_order: ``'RGB'`` (default: PIL, imageio) or ``'BGR'``
            (OpenCV's ``imread``) for 3-channel inputs.
        mirror: With ``random=True``, flip horizontally half of the time.
    """

    def __init__(self,
                 mean: Union[None, Sequence[float], numpy.ndarray] = None,
                 resize: Optional[Size] = None, crop: Optional[Size] = None,
                 scale: float = 1.0, input_range: float = 255.0,
                 channel_order: str = 'RGB', mirror: bool = False) -> None:
        if channel_order not in ('RGB', 'BGR'):
            raise PreprocessingError("channel_order must be 'RGB' or 'BGR', "
                                     'not {!r}'.format(channel_order))
        if input_range <= 0:
            raise PreprocessingError('input_range must be positive')
        self.mean = None if mean is None else numpy.asarray(
            mean, dtype=numpy.float32)
        if self.mean is not None and self.mean.ndim not in (1, 3):
            raise PreprocessingError('mean must be per channel (C,) or an '
                                     'image (C, H, W), got shape {}'.format(
                                         self.mean.shape))
        self.resize = None if resize is None else _pair(resize)
        self.crop = None if crop is None else _pair(crop)
        self.scale = float(scale)
        self.input_range = float(input_range)
        self.channel_order = channel_order
        self.mirror = mirror

    def __call__(self, image: numpy.ndarray, random: bool = False,
                 rng: Optional[numpy.random.RandomState] = None
                 ) -> numpy.ndarray:
        """Preprocesses one image.

        Args:
            image: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` array.
            random: Random crop and mirror (training) instead of the centre
                crop (testing).
            rng: Random state for ``random=True``; NumPy's global one if
                None.

        Returns:
            numpy.ndarray: float32 ``(3, h, w)`` in BGR order.
        """
        x = numpy.asarray(image)
        if x.ndim == 3 and x.shape[2] == 1:
            x = x[:, :, 0]
        if x.ndim == 2:
            x = numpy.stack([x] * 3, axis=2)
        if x.ndim != 3 or x.shape[2] != 3:
            raise PreprocessingError('expected an (H, W), (H, W, 1) or '
                                     '(H, W, 3) image, got shape {}'.format(
                                         x.shape))
        x = x.astype(numpy.float32) * numpy.float32(255.0 / self.input_range)
        if self.channel_order == 'RGB':
            x = x[:, :, ::-1]
        x = numpy.ascontiguousarray(x.transpose(2, 0, 1))   # CHW, BGR
        if self.resize is not None and x.shape[1:] != self.resize:
            x = F.resize_images(x[None], self.resize).array[0]
        mean = self.mean
        r = rng if rng is not None else numpy.random
        if self.crop is not None:
            ch, cw = self.crop
            H, W = x.shape[1:]
            if ch > H or cw > W:
                raise PreprocessingError('crop {} is larger than the image '
                                         '{}'.format(self.crop, (H, W)))
            if random:
                top = int(r.randint(0, H - ch + 1))
                left = int(r.randint(0, W - cw + 1))
            else:
                top, left = (H - ch) // 2, (W - cw) // 2
            window = (slice(None), slice(top, top + ch),
                      slice(left, left + cw))
            if mean is not None and mean.ndim == 3 and \
                    mean.shape[1:] == x.shape[1:]:
                mean = mean[window]
            x = x[window]
        if random and self.mirror and r.randint(2):
            x = x[:, :, ::-1]
            if mean is not None and mean.ndim == 3:
                mean = mean[:, :, ::-1]
        if mean is not None:
            x = x - self._fit_mean(mean, x.shape)
        if self.scale != 1.0:
            x = x * numpy.float32(self.scale)
        return numpy.ascontiguousarray(x, dtype=numpy.float32)

    @staticmethod
    def _fit_mean(mean: numpy.ndarray, shape: Tuple[int, ...]
                  ) -> numpy.ndarray:
        if mean.shape[0] != shape[0]:
            raise PreprocessingError('mean has {} channels, the image {}'
                                     .format(mean.shape[0], shape[0]))
        if mean.ndim == 1:
            return mean[:, None, None]
        if mean.shape[1:] == shape[1:]:
            return mean
        # A mean image of another size: Caffe users then take its
        # per-channel average.
        logger.debug('mean image %s does not match input %s; using its '
                     'per-channel average', mean.shape, shape)
        return mean.mean(axis=(1, 2))[:, None, None]
