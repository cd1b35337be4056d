"""Running SSD-family detectors: input blob, detections, pictures.

A Caffe detector of the SSD family (OpenCV's res10 face detector,
MobileNet-SSD) ends in a ``DetectionOutput`` layer whose blob holds one row
``(image_id, label, score, xmin, ymin, xmax, ymax)`` per detection, the
corners as fractions of the image's width and height (OpenCV pads the
blob with rows of zeros up to ``keep_top_k``). :func:`detect` feeds images
to such a net and returns, per image, :class:`Detections` in pixels of
that image; :func:`draw_detections` draws them. See docs/detection.rst::

    net = load_caffe(files.caffemodel, files.prototxt)
    found = detect(net, [read_image('cat.png')], size=300,
                   mean=(127.5, 127.5, 127.5), scale=0.007843)
    found[0].labels, found[0].scores, found[0].boxes
"""

from __future__ import annotations

import logging
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import chainer
import chainer.functions as F
import numpy

from chainer_finetune.caffe.preprocessing import CaffePreprocessor
from chainer_finetune.errors import CaffeModelError, PreprocessingError

logger = logging.getLogger(__name__)

#: The values of one ``DetectionOutput`` row.
ROW_FIELDS = ('image_id', 'label', 'score', 'xmin', 'ymin', 'xmax', 'ymax')

Size = Union[int, Tuple[int, int]]


class Detections(NamedTuple):
    """What a detector found in one image, best score first.

    Attributes:
        labels: int32 ``(N,)`` class indices (the net's, background
            included in the numbering).
        scores: float32 ``(N,)`` confidences.
        boxes: float32 ``(N, 4)`` corners ``xmin, ymin, xmax, ymax`` in
            pixels of the image given.
    """

    labels: numpy.ndarray
    scores: numpy.ndarray
    boxes: numpy.ndarray


def _hw(size: Size) -> Tuple[int, int]:
    if isinstance(size, (int, numpy.integer)):
        size = (size, size)
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise PreprocessingError('the input size must be positive, not '
                                 '{}x{}'.format(height, width))
    return height, width


def input_blob(image: numpy.ndarray, size: Size,
               mean: Optional[Sequence[float]] = None,
               scale: Optional[float] = 1.0,
               channel_order: str = 'RGB') -> numpy.ndarray:
    """One image as a detector's input, as OpenCV's ``blobFromImage`` does.

    ``cv2.dnn.blobFromImage(bgr, scale, (W, H), mean, swapRB=False)``:
    resize to ``size`` (bilinear, pixel centres aligned as OpenCV's
    ``resize``, the result rounded to 0-255 integers as OpenCV's is for an
    8-bit image), BGR, CHW, subtract ``mean``, multiply by ``scale``. The
    values differ from OpenCV's by at most one gray level times ``scale``
    (OpenCV interpolates in fixed point).

    Args:
        image: ``(H, W, 3)`` (or grayscale) uint8 array, e.g. from
            :func:`chainer_finetune.data.read_image`.
        size: ``(height, width)`` of the net's input, or one int.
        mean: Per-channel mean in BGR order (0-255); None for none.
        scale: Multiplier after the mean subtraction (None: 1, as a
            known model's undeclared ``input_scale``).
        channel_order: ``'RGB'`` (Pillow) or ``'BGR'`` (``cv2.imread``).

    Returns:
        numpy.ndarray: float32 ``(3, height, width)``, BGR.
    """
    x = numpy.asarray(image)
    if x.ndim == 3 and x.shape[2] == 4:
        x = x[:, :, :3]   # alpha dropped, as OpenCV's imread does
    height, width = _hw(size)
    if x.ndim in (2, 3) and x.shape[:2] != (height, width):
        planes = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        planes = numpy.ascontiguousarray(planes, dtype=numpy.float32)
        resized = F.resize_images(planes[None], (height, width),
                                  align_corners=False).array[0]
        resized = numpy.clip(numpy.rint(resized), 0, 255)
        x = resized[0] if x.ndim == 2 else resized.transpose(1, 2, 0)
    prep = CaffePreprocessor(mean=mean,
                             scale=1.0 if scale is None else scale,
                             channel_order=channel_order)
    return prep(x)


def detection_blob(net) -> str:
    """The top blob of the net's last ``DetectionOutput`` layer.

    Raises:
        CaffeModelError: the net has none.
    """
    found = [layer.top[0] for layer in getattr(net, 'caffe_layers', ())
             if layer.type == 'DetectionOutput' and layer.top]
    if not found:
        raise CaffeModelError(
            'the net has no DetectionOutput layer: not an SSD-style '
            'detector (or it was cut before its head); name the blob of '
            'detection rows explicitly')
    return found[-1]


def decode_detections(rows: numpy.ndarray,
                      image_sizes: Sequence[Tuple[int, int]],
                      threshold: float = 0.0, clip: bool = True
                      ) -> List[Detections]:
    """Splits ``DetectionOutput`` rows into per-image detections in pixels.

    Args:
        rows: The blob, any shape ending in 7 (``[1, 1, N, 7]``); see
            :data:`ROW_FIELDS`. Rows whose image id is outside the batch
            (Caffe's ``-1`` when nothing was found) or whose score is not
            above ``threshold`` (OpenCV's zero padding) are dropped.
        image_sizes: ``(height, width)`` of each image of the batch, in the
            batch's order.
        threshold: Keep detections scoring strictly above it.
        clip: Clip the corners to the image.

    Returns:
        list: One :class:`Detections` per image, best score first.
    """
    rows = numpy.asarray(rows, dtype=numpy.float32)
    if rows.ndim == 0 or rows.shape[-1] != len(ROW_FIELDS):
        raise CaffeModelError('detection rows must have {} values ({}), got '
                              'a blob of shape {}'.format(
                                  len(ROW_FIELDS), ', '.join(ROW_FIELDS),
                                  rows.shape))
    rows = rows.reshape(-1, len(ROW_FIELDS))
    image_ids = rows[:, 0].astype(numpy.int64)
    result = []
    for index, (height, width) in enumerate(image_sizes):
        mine = rows[(image_ids == index) & (rows[:, 2] > threshold)]
        mine = mine[numpy.argsort(-mine[:, 2], kind='stable')]
        boxes = mine[:, 3:7] * numpy.array(
            [width, height, width, height], numpy.float32)
        if clip:
            boxes = numpy.clip(boxes, 0, numpy.array(
                [width, height, width, height], numpy.float32))
        result.append(Detections(mine[:, 1].astype(numpy.int32),
                                 numpy.ascontiguousarray(mine[:, 2]),
                                 numpy.ascontiguousarray(boxes)))
    return result


def detect(net, images: Sequence[numpy.ndarray], *, size: Size,
           mean: Optional[Sequence[float]] = None,
           scale: Optional[float] = 1.0, threshold: float = 0.5,
           input_name: Optional[str] = None,
           output_name: Optional[str] = None, batchsize: int = 8,
           channel_order: str = 'RGB') -> List[Detections]:
    """Runs a detector on images; returns what it found in each.

    Args:
        net: A :class:`~chainer_finetune.CaffeNet` ending in
            ``DetectionOutput``, or anything called the same way
            (``net(inputs={name: x}, outputs=[name])``, run in test mode
            without a graph); the input goes to ``net.device`` when it has
            one.
        images: ``(H, W, 3)`` uint8 images of any sizes.
        size: The net's input ``(height, width)`` (or one int).
        mean: See :func:`input_blob`.
        scale: See :func:`input_blob`.
        threshold: Keep detections scoring strictly above it.
        input_name: The input blob; default the net's first input.
        output_name: The detection blob; default :func:`detection_blob`.
        batchsize: Images per forward pass.
        channel_order: See :func:`input_blob`.

    Returns:
        list: One :class:`Detections` per image, boxes in its pixels.
    """
    if batchsize < 1:
        raise ValueError('batchsize must be positive')
    if input_name is None:
        inputs = list(getattr(net, 'inputs', None) or ['data'])
        input_name = inputs[0]
    if output_name is None:
        output_name = detection_blob(net)
    device = getattr(net, 'device', None)
    found: List[Detections] = []
    for start in range(0, len(images), batchsize):
        batch = images[start:start + batchsize]
        x = numpy.stack([input_blob(im, size, mean, scale, channel_order)
                         for im in batch])
        if device is not None:
            x = device.send(x)
        with chainer.using_config('train', False), \
                chainer.no_backprop_mode():
            y, = net(inputs={input_name: x}, outputs=[output_name])
        rows = chainer.backend.CpuDevice().send(
            y.array if isinstance(y, chainer.Variable) else y)
        found += decode_detections(
            rows, [numpy.asarray(im).shape[:2] for im in batch], threshold)
    return found


def label_text(label: int, label_names: Optional[Sequence[str]] = None
               ) -> str:
    """``'cat (8)'`` with names, ``'8'`` without (or out of range)."""
    if label_names is not None and 0 <= label < len(label_names):
        return '{} ({})'.format(label_names[label], label)
    return str(label)


def _colour(label: int) -> Tuple[int, int, int]:
    """A bright colour per label, the same in every picture."""
    hue = (label * 0.618033988749895) % 1.0
    sector, frac = divmod(hue * 6, 1)
    rising, falling = int(255 * frac), int(255 * (1 - frac))
    return [(255, rising, 0), (falling, 255, 0), (0, 255, rising),
            (0, falling, 255), (rising, 0, 255),
            (255, 0, falling)][int(sector)]


def draw_detections(image: numpy.ndarray, detections: Detections,
                    label_names: Optional[Sequence[str]] = None):
    """The image with each detection's box, label and score drawn.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or grayscale) array.
        detections: Its :class:`Detections` (pixels).
        label_names: Class names by index, for the captions.

    Returns:
        PIL.Image.Image: An RGB copy of the image with the boxes drawn
        (``.save('out.png')`` writes it).
    """
    from PIL import Image, ImageDraw, ImageFont
    picture = Image.fromarray(numpy.asarray(image, numpy.uint8)).convert(
        'RGB')
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    line = max(2, min(picture.size) // 150)
    for label, score, box in zip(detections.labels, detections.scores,
                                 detections.boxes):
        colour = _colour(int(label))
        xmin, ymin, xmax, ymax = (float(v) for v in box)
        draw.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=line)
        caption = '{} {:.2f}'.format(label_text(int(label), label_names),
                                     float(score))
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        height = bottom - top + 4
        y = ymin - height if ymin >= height else ymin
        draw.rectangle([xmin, y, xmin + right - left + 4, y + height],
                       fill=colour)
        # Black on light colours, white on dark ones (Rec. 601 luma).
        luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text((xmin + 2, y + 2 - top), caption, font=font,
                  fill=(0, 0, 0) if luma > 128 else (255, 255, 255))
    return picture


def format_detection(image: str, label: int, score: float,
                     box: Sequence[float],
                     label_names: Optional[Sequence[str]] = None) -> str:
    """One line per detection: image, label, score, box in pixels."""
    return '{}\t{}\t{:.4f}\t{:.1f},{:.1f},{:.1f},{:.1f}'.format(
        image, label_text(int(label), label_names), float(score),
        *(float(v) for v in box))
