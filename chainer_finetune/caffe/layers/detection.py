"""The SSD fork's detection layers (weiliu89/caffe, branch ssd): Permute,
PriorBox and DetectionOutput, with the fork's numerics.

PriorBox is computed from the actual feature-map and image sizes on every
call, so a net runs at input sizes other than its prototxt's. Where OpenCV's
dnn module differs from the fork's source, these follow the fork (see
:doc:`/loading`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Sequence, Tuple

import chainer
from chainer import backend
import chainer.functions as F
import numpy

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.layers import base
from chainer_finetune.caffe.layers.registry import register
from chainer_finetune.errors import CaffeModelError
from chainer_finetune.errors import NoGradientError

_CodeType = caffe_pb2.PriorBoxParameter


# --------------------------------------------------------------------------
# Permute
# --------------------------------------------------------------------------

def permute_order(order: Sequence[int], ndim: int) -> Tuple[int, ...]:
    """Caffe's Permute order: the given axes, then the missing ones in
    their order.

    Raises:
        CaffeModelError: for an axis out of range or given twice.
    """
    axes = list(order)
    if any(axis >= ndim for axis in axes):
        raise CaffeModelError('permute order {} names an axis beyond the '
                              'input\'s {} axes'.format(axes, ndim))
    if len(set(axes)) != len(axes):
        raise CaffeModelError('permute order {} repeats an axis'.format(axes))
    return tuple(axes + [axis for axis in range(ndim) if axis not in axes])


@dataclasses.dataclass(eq=False)
class _Permute(base.LayerFunction):
    order: Tuple[int, ...]

    def __call__(self, net, x):
        axes = permute_order(self.order, x.ndim)
        if axes == tuple(range(x.ndim)):
            return x,
        return F.transpose(x, axes),


@register('Permute')
def _build_permute(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    order = tuple(ctx.layer.permute_param.order)
    if len(set(order)) != len(order):
        raise ctx.error('permute order {} repeats an axis'.format(
            list(order)))
    return base.Built(_Permute(order), None)


# --------------------------------------------------------------------------
# PriorBox
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PriorBoxSettings:
    """A PriorBox layer's parameters as the fork reads them.

    Attributes:
        min_sizes: Box sizes in pixels; the fork truncates them to int.
        max_sizes: Empty, or one per min size (int, like the min sizes).
        aspect_ratios: 1 first, then each new ratio (and 1/ratio with
            ``flip``).
        clip: Clip the boxes to [0, 1].
        variances: One value, or four.
        img_h, img_w: The image size; 0 takes it from the second bottom.
        step_h, step_w: The distance of cells in pixels; 0 derives it from
            the image and feature-map sizes.
        offset: The centre of a cell, in cells.
    """

    min_sizes: Tuple[int, ...]
    max_sizes: Tuple[int, ...]
    aspect_ratios: Tuple[float, ...]
    clip: bool
    variances: Tuple[float, ...]
    img_h: int
    img_w: int
    step_h: float
    step_w: float
    offset: float

    @property
    def num_priors(self) -> int:
        """Boxes per feature-map cell."""
        return (len(self.aspect_ratios) * len(self.min_sizes) +
                len(self.max_sizes))

    def box_sizes(self) -> numpy.ndarray:
        """(num_priors, 2) widths and heights in the fork's order: per min
        size the square, the square of sqrt(min * max), the other ratios."""
        sizes = []
        for index, min_size in enumerate(self.min_sizes):
            sizes.append((min_size, min_size))
            if self.max_sizes:
                side = math.sqrt(min_size * self.max_sizes[index])
                sizes.append((side, side))
            for ratio in self.aspect_ratios:
                if abs(ratio - 1.0) < 1e-6:
                    continue
                root = numpy.sqrt(numpy.float32(ratio))
                sizes.append((min_size * root, min_size / root))
        return numpy.array(sizes, numpy.float32).reshape(-1, 2)

    def priors(self, layer_hw: Tuple[int, int], image_hw: Tuple[int, int]
               ) -> numpy.ndarray:
        """The top, (1, 2, H * W * num_priors * 4), for a feature map of
        ``layer_hw`` and an image of ``image_hw`` (used where the layer
        gives no image size)."""
        height, width = layer_hw
        img_h, img_w = ((self.img_h, self.img_w) if self.img_h and self.img_w
                        else image_hw)
        f32 = numpy.float32
        if self.step_h and self.step_w:
            step_h, step_w = f32(self.step_h), f32(self.step_w)
        else:
            step_h, step_w = f32(img_h) / f32(height), f32(img_w) / f32(width)
        center_y = (numpy.arange(height, dtype=f32) + f32(self.offset)) * \
            step_h
        center_x = (numpy.arange(width, dtype=f32) + f32(self.offset)) * \
            step_w
        half = self.box_sizes().astype(numpy.float64) / 2
        cx = center_x.astype(numpy.float64)[None, :, None]
        cy = center_y.astype(numpy.float64)[:, None, None]
        # The fork computes each corner in double and stores a float.
        shape = (height, width, len(half))
        corners = [(cx - half[:, 0]) / img_w, (cy - half[:, 1]) / img_h,
                   (cx + half[:, 0]) / img_w, (cy + half[:, 1]) / img_h]
        boxes = numpy.stack([numpy.broadcast_to(c, shape) for c in corners],
                            axis=-1).astype(f32).ravel()
        if self.clip:
            boxes = numpy.clip(boxes, 0, 1)
        variances = numpy.broadcast_to(
            numpy.array(self.variances, f32),
            (boxes.size // len(self.variances), len(self.variances))).ravel()
        return numpy.stack([boxes, variances])[None]


def _aspect_ratios(p: caffe_pb2.PriorBoxParameter) -> Tuple[float, ...]:
    ratios = [1.0]
    for ratio in p.aspect_ratio:
        if any(abs(ratio - known) < 1e-6 for known in ratios):
            continue
        ratios.append(ratio)
        if p.flip:
            # The fork stores 1 / ratio computed in double as a float.
            ratios.append(float(numpy.float32(1.0 / ratio)))
    return tuple(ratios)


def _pair(ctx: base.BuildContext, p, both: str, h: str, w: str,
          cast: type) -> Tuple:
    """(h, w) from ``both`` or the ``h``/``w`` fields; 0 when unset."""
    if p.HasField(h) or p.HasField(w):
        if p.HasField(both):
            raise ctx.error('give either {} or {}/{}, not both'.format(
                both, h, w))
        pair = (cast(getattr(p, h)), cast(getattr(p, w)))
    else:
        pair = (cast(getattr(p, both)),) * 2
    if (p.HasField(h) or p.HasField(w) or p.HasField(both)) and \
            min(pair) <= 0:
        raise ctx.error('{} must be positive, got {}'.format(both, pair))
    return pair


def prior_box_settings(ctx: base.BuildContext) -> PriorBoxSettings:
    """The settings of a PriorBox layer, checked as the fork checks them.

    Raises:
        CaffeModelError: for an invalid combination.
        UnsupportedLayerError: for OpenCV's own PriorBox fields.
    """
    p = ctx.layer.prior_box_param
    if p.width or p.height or p.offset_h or p.offset_w:
        raise ctx.unsupported("OpenCV's explicit width/height/offset_h/"
                              "offset_w priors are not supported")
    values = (list(p.min_size) + list(p.max_size) + list(p.aspect_ratio) +
              list(p.variance) + [p.step, p.step_h, p.step_w, p.offset])
    if not all(math.isfinite(v) for v in values) or \
            any(r <= 0 for r in p.aspect_ratio):
        raise ctx.error('sizes, steps, offset and variances must be finite '
                        'and aspect ratios positive')
    # The fork keeps the sizes in int variables.
    min_sizes = tuple(int(size) for size in p.min_size)
    max_sizes = tuple(int(size) for size in p.max_size)
    if not min_sizes or min(p.min_size) <= 0:
        raise ctx.error('min_size must be given and positive')
    if max_sizes and (len(max_sizes) != len(min_sizes) or any(
            hi <= lo for lo, hi in zip(p.min_size, p.max_size))):
        raise ctx.error('max_size needs one value per min_size, each '
                        'larger than it')
    if len(p.variance) not in (0, 1, 4) or any(v <= 0 for v in p.variance):
        raise ctx.error('variance must be one or four positive values, got '
                        '{}'.format(list(p.variance)))
    img_h, img_w = _pair(ctx, p, 'img_size', 'img_h', 'img_w', int)
    step_h, step_w = _pair(ctx, p, 'step', 'step_h', 'step_w', float)
    if not (img_h and img_w) and len(ctx.layer.bottom) < 2:
        raise ctx.error('without img_size the image must be the second '
                        'bottom')
    return PriorBoxSettings(min_sizes, max_sizes, _aspect_ratios(p), p.clip,
                            tuple(p.variance) or (0.1,), img_h, img_w,
                            step_h, step_w, p.offset)


@dataclasses.dataclass(eq=False)
class _PriorBox(base.LayerFunction):
    settings: PriorBoxSettings

    def __call__(self, net, x, image=None):
        image_hw = (0, 0) if image is None else tuple(image.shape[2:4])
        priors = self.settings.priors(tuple(x.shape[2:4]), image_hw)
        device = backend.get_device_from_array(
            x.array if isinstance(x, chainer.Variable) else x)
        return chainer.Variable(device.send(priors), requires_grad=False),


@register('PriorBox')
def _build_prior_box(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1, 2)
    return base.Built(_PriorBox(prior_box_settings(ctx)), None)


# --------------------------------------------------------------------------
# DetectionOutput
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DetectionSettings:
    """A DetectionOutput layer's parameters as the fork reads them.

    Attributes:
        num_classes: Classes of the confidences, background included.
        share_location: One box per prior for all classes.
        background_label_id: The class not reported (-1: none).
        code_type: ``PriorBoxParameter.CodeType`` of the predictions.
        variance_encoded_in_target: The predictions are already scaled by
            the variances.
        keep_top_k: Detections kept per image (-1: all).
        confidence_threshold: Scores must exceed it (``-FLT_MAX`` unset).
        nms_threshold: Overlap above which NMS drops a box.
        top_k: Boxes per class entering NMS (-1: all).
        eta: Adaptive NMS: the threshold shrinks by ``eta`` after each kept
            box while above 0.5.
    """

    num_classes: int
    share_location: bool = True
    background_label_id: int = 0
    code_type: int = _CodeType.CORNER
    variance_encoded_in_target: bool = False
    keep_top_k: int = -1
    confidence_threshold: float = -float(numpy.finfo(numpy.float32).max)
    nms_threshold: float = 0.3
    top_k: int = -1
    eta: float = 1.0

    @property
    def num_loc_classes(self) -> int:
        return 1 if self.share_location else self.num_classes


def decode_boxes(xp, loc, priors, variances, code_type: int,
                 variance_encoded_in_target: bool):
    """The fork's ``DecodeBBox`` on arrays (float32, any array module).

    Args:
        xp: NumPy or CuPy.
        loc: (..., num_priors, 4) predictions.
        priors, variances: (num_priors, 4) each, broadcast against ``loc``.
        code_type: CORNER, CENTER_SIZE or CORNER_SIZE.
        variance_encoded_in_target: Skip the variances.

    Returns:
        Boxes (xmin, ymin, xmax, ymax) shaped like ``loc``.
    """
    if not variance_encoded_in_target:
        loc = variances * loc
    xmin, ymin, xmax, ymax = (priors[..., k] for k in range(4))
    if code_type == _CodeType.CORNER:
        return priors + loc
    width, height = xmax - xmin, ymax - ymin
    if code_type == _CodeType.CORNER_SIZE:
        sizes = xp.stack([width, height, width, height], axis=-1)
        return priors + loc * sizes
    if code_type != _CodeType.CENTER_SIZE:
        raise CaffeModelError('unknown code_type {}'.format(code_type))
    center_x = loc[..., 0] * width + (xmin + xmax) / 2
    center_y = loc[..., 1] * height + (ymin + ymax) / 2
    half_w = xp.exp(loc[..., 2]) * width / 2
    half_h = xp.exp(loc[..., 3]) * height / 2
    return xp.stack([center_x - half_w, center_y - half_h,
                     center_x + half_w, center_y + half_h], axis=-1)


def jaccard_overlaps(box: numpy.ndarray, boxes: numpy.ndarray
                     ) -> numpy.ndarray:
    """The fork's ``JaccardOverlap`` (normalized boxes, float32) of one box
    with each row of ``boxes``."""
    disjoint = ((boxes[:, 0] > box[2]) | (boxes[:, 2] < box[0]) |
                (boxes[:, 1] > box[3]) | (boxes[:, 3] < box[1]))
    width = numpy.minimum(box[2], boxes[:, 2]) - numpy.maximum(box[0],
                                                               boxes[:, 0])
    height = numpy.minimum(box[3], boxes[:, 3]) - numpy.maximum(box[1],
                                                                boxes[:, 1])
    overlapping = ~disjoint & (width > 0) & (height > 0)
    inter = numpy.where(overlapping, width * height, numpy.float32(0))
    union = _box_sizes(box[None])[0] + _box_sizes(boxes) - inter
    union = numpy.where(overlapping, union, numpy.float32(1))
    return numpy.where(overlapping, inter / union, numpy.float32(0))


def _box_sizes(boxes: numpy.ndarray) -> numpy.ndarray:
    # BBoxSize: 0 for an inverted box.
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    return numpy.where((width < 0) | (height < 0), numpy.float32(0),
                       width * height)


def nms_indices(xp, boxes, scores, settings: DetectionSettings
                ) -> numpy.ndarray:
    """The fork's ``ApplyNMSFast`` for one class of one image.

    The candidates are found and sorted on ``xp``; the greedy pass, which
    is sequential, runs on a host copy of their (at most ``top_k``) boxes.

    Returns:
        The kept prior indices, best score first (host int64 array).
    """
    candidates = xp.nonzero(scores > numpy.float32(
        settings.confidence_threshold))[0]
    # The candidates are in index order: a stable sort on the negated
    # scores is the fork's std::stable_sort by descending score.
    order = xp.argsort(-scores[candidates], kind='stable')
    if settings.top_k > -1:
        order = order[:settings.top_k]
    candidates = candidates[order]
    host_boxes = backend.CpuDevice().send(boxes[candidates])
    candidates = backend.CpuDevice().send(candidates)
    threshold = numpy.float32(settings.nms_threshold)
    eta = numpy.float32(settings.eta)
    kept: List[int] = []
    if eta >= 1:
        # A fixed threshold: each kept box suppresses, at once, every later
        # candidate that overlaps it too much (the overlap is symmetric to
        # the bit), which is what comparing each candidate with every kept
        # box decides, in one pass per kept box instead of per candidate.
        alive = numpy.ones(len(candidates), bool)
        for position in range(len(candidates)):
            if alive[position]:
                kept.append(position)
                alive[position + 1:] &= jaccard_overlaps(
                    host_boxes[position],
                    host_boxes[position + 1:]) <= threshold
        return numpy.asarray(candidates[kept], dtype=numpy.int64)
    for position in range(len(candidates)):
        if kept and not (jaccard_overlaps(host_boxes[position],
                                          host_boxes[kept]) <=
                         threshold).all():
            continue
        kept.append(position)
        if threshold > 0.5:     # the fork's adaptive NMS
            threshold = threshold * eta
    return numpy.asarray(candidates[kept], dtype=numpy.int64)


def _keep_top_k(indices: Dict[int, numpy.ndarray], scores: numpy.ndarray,
                keep_top_k: int) -> Dict[int, numpy.ndarray]:
    """The ``keep_top_k`` best of one image's detections, by label.

    ``scores`` is the image's (num_priors, num_classes) host array.
    """
    labels = numpy.concatenate([numpy.full(len(kept), label)
                                for label, kept in indices.items()])
    priors = numpy.concatenate(list(indices.values()))
    # Stable on ties (the fork's std::sort leaves their order open).
    best = numpy.argsort(-scores[priors, labels], kind='stable')[:keep_top_k]
    return {int(label): priors[best][labels[best] == label]
            for label in sorted(set(labels[best].tolist()))}


def detect(xp, loc, conf, prior, settings: DetectionSettings):
    """The fork's DetectionOutput forward on arrays.

    Args:
        xp: NumPy or CuPy, the module of the arrays.
        loc: (N, num_priors * num_loc_classes * 4, ...) box predictions.
        conf: (N, num_priors * num_classes, ...) class scores.
        prior: (1, 2, num_priors * 4) priors and variances (PriorBox).
        settings: The layer's parameters.

    Returns:
        (1, 1, rows, 7) float32: image_id, label, score, xmin, ymin, xmax,
        ymax per detection, by image, label and descending score; with no
        detection at all one row per image [i, -1, -1, -1, -1, -1, -1], as
        the fork gives it.

    Raises:
        CaffeModelError: for inputs whose sizes do not fit together.
    """
    num = loc.shape[0]
    num_priors = prior.shape[2] // 4
    if loc[0].size != num_priors * settings.num_loc_classes * 4 or \
            conf[0].size != num_priors * settings.num_classes or \
            conf.shape[0] != num:
        raise CaffeModelError(
            'DetectionOutput: {} priors and {} classes do not fit '
            'locations {} and confidences {}'.format(
                num_priors, settings.num_classes, loc.shape, conf.shape))
    loc = loc.reshape(num, num_priors, settings.num_loc_classes, 4)
    conf = conf.reshape(num, num_priors, settings.num_classes)
    priors = prior[0, 0].reshape(num_priors, 1, 4)
    if prior.shape[1] > 1:
        variances = prior[0, 1].reshape(num_priors, 1, 4)
    elif settings.variance_encoded_in_target:
        # OpenCV's convention: priors without the unused variance channel.
        variances = xp.ones_like(priors)
    else:
        raise CaffeModelError('DetectionOutput: the priors {} hold no '
                              'variances'.format(prior.shape))
    boxes = decode_boxes(xp, loc, priors, variances, settings.code_type,
                         settings.variance_encoded_in_target)
    rows = []
    for image in range(num):
        indices = _image_indices(xp, boxes[image], conf[image], settings)
        rows.extend(_rows(xp, image, indices, boxes[image], conf[image],
                          settings.share_location))
    if not rows:
        empty = xp.full((num, 7), -1, dtype=numpy.float32)
        empty[:, 0] = xp.arange(num, dtype=numpy.float32)
        return empty[None, None]
    return xp.concatenate(rows).astype(numpy.float32)[None, None]


def _image_indices(xp, boxes, conf, settings: DetectionSettings
                   ) -> Dict[int, numpy.ndarray]:
    """Kept prior indices by label for one image, after keep_top_k."""
    indices = {}
    for label in range(settings.num_classes):
        if label == settings.background_label_id:
            continue
        location = 0 if settings.share_location else label
        indices[label] = nms_indices(xp, boxes[:, location], conf[:, label],
                                     settings)
    found = sum(len(kept) for kept in indices.values())
    if settings.keep_top_k > -1 and found > settings.keep_top_k:
        return _keep_top_k(indices, backend.CpuDevice().send(conf),
                           settings.keep_top_k)
    return indices


def _rows(xp, image: int, indices: Dict[int, numpy.ndarray], boxes, conf,
          share_location: bool) -> List:
    """One image's output rows, by label then in NMS order."""
    rows = []
    for label, kept in sorted(indices.items()):
        if not len(kept):
            continue
        kept = xp.asarray(kept)
        location = 0 if share_location else label
        heads = xp.asarray(numpy.array([image, label], numpy.float32))
        rows.append(xp.concatenate([
            xp.broadcast_to(heads, (len(kept), 2)),
            conf[kept, label][:, None], boxes[kept, location]], axis=1))
    return rows


class DetectionOutputFunction(chainer.FunctionNode):
    """:func:`detect` as a Chainer function: no gradient; a backward pass
    reaching it raises :class:`~chainer_finetune.errors.NoGradientError`."""

    def __init__(self, settings: DetectionSettings) -> None:
        self.settings = settings

    def forward(self, inputs):
        loc, conf, prior = inputs
        xp = backend.get_array_module(loc)
        return detect(xp, loc, conf, prior, self.settings),

    def backward(self, indexes, grad_outputs):
        raise NoGradientError(
            'DetectionOutput has no gradient: its box selection is not '
            'differentiable; train on the layers before it (e.g. '
            'stop_at) instead')


@dataclasses.dataclass(eq=False)
class _DetectionOutput(base.LayerFunction):
    settings: DetectionSettings

    def __call__(self, net, loc, conf, prior):
        return DetectionOutputFunction(self.settings).apply(
            (loc, conf, prior))


def detection_settings(ctx: base.BuildContext) -> DetectionSettings:
    """The settings of a DetectionOutput layer, checked as the fork checks
    them.

    Raises:
        CaffeModelError: for missing or invalid parameters.
    """
    p = ctx.layer.detection_output_param
    nms = p.nms_param
    if not p.HasField('num_classes'):
        raise ctx.error('num_classes must be given')
    if not nms.nms_threshold >= 0 or not 0 < nms.eta <= 1:   # NaN too
        raise ctx.error('nms_threshold must be >= 0 and eta in (0, 1]')
    if p.code_type not in (_CodeType.CORNER, _CodeType.CENTER_SIZE,
                           _CodeType.CORNER_SIZE):
        raise ctx.error('unknown code_type {}'.format(p.code_type))
    if p.share_location and p.background_label_id == -1:
        # The fork skips the shared boxes' label -1 as background when
        # decoding, then aborts for want of them (OpenCV fails alike).
        raise ctx.error('background_label_id -1 with share_location true '
                        'has no boxes in the SSD fork; use share_location '
                        'false or a background label >= 0')
    defaults = DetectionSettings(p.num_classes)
    return DetectionSettings(
        p.num_classes, p.share_location, p.background_label_id, p.code_type,
        p.variance_encoded_in_target, p.keep_top_k,
        p.confidence_threshold if p.HasField('confidence_threshold')
        else defaults.confidence_threshold,
        nms.nms_threshold, nms.top_k if nms.HasField('top_k') else -1,
        nms.eta)


@register('DetectionOutput')
def _build_detection_output(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(3)
    return base.Built(_DetectionOutput(detection_settings(ctx)), None)
