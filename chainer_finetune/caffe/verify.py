"""Layer-by-layer comparison of a loaded Caffe net with OpenCV's DNN module.

OpenCV's ``cv2.dnn.readNetFromCaffe`` is an independent implementation of
Caffe's layers (its own importer, V1 upgrade and kernels): running the same
input through it and through :func:`~chainer_finetune.caffe.load_caffe`
checks the whole conversion. A layer that computes in place (``bottom`` ==
``top``, as BatchNorm, Scale and ReLU do in most ResNets) overwrites its
blob, so every row compares one top of one layer *right after that layer
ran*: OpenCV's output of the layer (``forwardAndRetrieve``, plain CPU
kernels, no layer fusion) against ours, stepped one layer at a time
(:func:`step_outputs`). Layers OpenCV does not expose and layers skipped
because an input such as ``label`` is not fed are rows without numbers.

Needs OpenCV (``pip install 'opencv-python-headless<5'``: OpenCV 5
dropped ``readNetFromCaffe``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from typing import (Dict, Iterable, List, Mapping, NamedTuple, Optional,
                    Sequence, TextIO, Tuple, Union)

import chainer
import numpy

from chainer_finetune import hub
from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.net import CaffeNet
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.errors import (
    ChainerFinetuneError, InputShapeError, OpenCVComparisonError,
    OpenCVUnavailableError)
from chainer_finetune.files import PathLike

logger = logging.getLogger(__name__)

Shape = Tuple[int, ...]
#: One shape (for the first input) or shapes by input blob name.
InputShape = Union[Sequence[int], Mapping[str, Sequence[int]], None]

#: The default tolerance of ``chainer-finetune verify`` (relative L2).
DEFAULT_TOLERANCE = 1e-4

#: The default largest difference of a detection's score or corner
#: (fractions of the image) from OpenCV's (``DetectionOutput`` blobs).
DEFAULT_DETECTION_TOLERANCE = 1e-3

#: The most values (all inputs together) :func:`check_input_shapes` lets
#: ``inspect`` and ``verify`` feed a net: 2**27 float32 values (512 MiB).
#: The blobs a net computes from them are several times larger.
MAX_INPUT_VALUES = 2 ** 27

#: Layer types whose tops are supplied by the caller.
DATA_LAYER_TYPES = frozenset([
    'Input', 'Data', 'MemoryData', 'ImageData', 'DummyData', 'HDF5Data',
    'WindowData'])


class ComparisonRow(NamedTuple):
    """One top of one layer, ours against OpenCV's.

    Attributes:
        layer: The Caffe layer name.
        blob: The top (blob) name.
        shape: The shape of our output.
        max_abs: ``max |ours - opencv|``; None when not compared.
        rel_l2: ``||ours - opencv||_2 / ||opencv||_2`` (float64; ``inf``
            for a shape or NaN mismatch); None when not compared. For a
            ``DetectionOutput`` blob, 0 when the detections match and
            ``inf`` when they do not (see ``detections``).
        detections: For a ``DetectionOutput`` blob, the detections compared
            as sets (:class:`DetectionMatch`; ``max_abs`` is then its
            ``max_abs``); None for any other blob.
    """

    layer: str
    blob: str
    shape: Shape
    max_abs: Optional[float]
    rel_l2: Optional[float]
    detections: Optional['DetectionMatch'] = None

    @property
    def compared(self) -> bool:
        """Whether OpenCV gave a value for this blob."""
        return self.rel_l2 is not None


def import_cv2():
    """Imports OpenCV, raising :class:`OpenCVUnavailableError` if unusable."""
    try:
        import cv2
    except ImportError as e:
        raise OpenCVUnavailableError(
            'comparing with OpenCV needs the cv2 module: pip install '
            "'opencv-python-headless<5' ({})".format(e)) from e
    if not hasattr(getattr(cv2, 'dnn', None), 'readNetFromCaffe'):
        raise OpenCVUnavailableError(
            'OpenCV {} has no cv2.dnn.readNetFromCaffe (removed in OpenCV '
            "5): pip install 'opencv-python-headless<5'".format(
                getattr(cv2, '__version__', '?')))
    return cv2


def compare_arrays(ours: numpy.ndarray, reference: numpy.ndarray
                   ) -> Tuple[float, float]:
    """``(max_abs, rel_l2)`` of two arrays, in float64.

    Equal infinities in the same places count as equal; any NaN, even
    against a NaN of the other side (``numpy.allclose``'s default), and any
    other infinity make both numbers ``inf``: a blob of NaNs says the
    weights or the computation are broken, not that two programs agree.
    ``rel_l2`` divides by the reference's norm (ours where the reference is
    all zeros; 0 when both are).
    """
    a = numpy.asarray(ours, dtype=numpy.float64)
    b = numpy.asarray(reference, dtype=numpy.float64)
    if a.shape != b.shape:
        if a.size != b.size:
            return math.inf, math.inf
        b = b.reshape(a.shape)
    if a.size == 0:
        return 0.0, 0.0
    with numpy.errstate(invalid='ignore'):   # inf - inf
        diff = numpy.where(a == b, 0.0, a - b)   # NaN != NaN: stays NaN
    if not numpy.isfinite(diff).all():
        return math.inf, math.inf
    max_abs = float(numpy.abs(diff).max())
    err = float(numpy.linalg.norm(diff.ravel()))
    if err == 0:
        return max_abs, 0.0
    # Matching infinities are left out of the norms.
    norm = float(numpy.linalg.norm(numpy.where(numpy.isfinite(b), b,
                                               0.0).ravel()))
    if norm == 0:
        norm = float(numpy.linalg.norm(numpy.where(numpy.isfinite(a), a,
                                                   0.0).ravel()))
    return max_abs, (err / norm if norm > 0 else math.inf)


# --------------------------------------------------------------------------
# DetectionOutput blobs, compared as detections
# --------------------------------------------------------------------------

class DetectionMatch(NamedTuple):
    """A ``DetectionOutput`` blob compared as two sets of detections.

    Ours holds exactly the detections, grouped by image and label (Caffe's
    layout); OpenCV's is ``(1, 1, keep_top_k, 7)``, sorted by score and
    padded with zero rows. A detection of one side matches one of the
    other with the same image and label whose score and corners differ by
    at most ``tolerance``.

    Attributes:
        ours: Our detections (``(n, 7)``, placeholder rows left out).
        theirs: OpenCV's detections (padding left out).
        matched: The number of pairs found.
        max_abs: The largest ``|difference|`` of score or corner over the
            pairs (0 without pairs).
        unmatched_ours: Our detections without a partner, ``(k, 7)``.
        unmatched_theirs: OpenCV's detections without a partner.
        at_cut: Detections left unpaired but allowed: their score lies
            within ``tolerance`` of the confidence threshold or of the
            lowest score kept when ``keep_top_k`` cut the list, where
            rounding decides which side keeps them.
        tolerance: The largest difference of score or corner allowed.
    """

    ours: numpy.ndarray
    theirs: numpy.ndarray
    matched: int
    max_abs: float
    unmatched_ours: numpy.ndarray
    unmatched_theirs: numpy.ndarray
    at_cut: int
    tolerance: float

    @property
    def ok(self) -> bool:
        """Whether every detection (but those at a cut) has a partner."""
        return not len(self.unmatched_ours) and not len(self.unmatched_theirs)

    def describe(self) -> str:
        """A one-line verdict, e.g. ``111 of 111 detections matched``."""
        text = '{} of {} detections matched (OpenCV: {})'.format(
            self.matched, len(self.ours), len(self.theirs))
        if self.at_cut:
            text += ', {} unpaired at the cut'.format(self.at_cut)
        if self.ok:
            return text
        worst = [r for r in (self.unmatched_ours[:1], self.unmatched_theirs[:1])
                 if len(r)]
        return '{}; unmatched: {} of ours, {} of OpenCV\'s, e.g. {}'.format(
            text, len(self.unmatched_ours), len(self.unmatched_theirs),
            _format_detection(worst[0][0]))


def _format_detection(row: numpy.ndarray) -> str:
    return 'image {:g} label {:g} score {:.4g} box ({})'.format(
        row[0], row[1], row[2], ', '.join('{:.4g}'.format(v)
                                          for v in row[3:7]))


def detection_rows(blob: numpy.ndarray) -> numpy.ndarray:
    """The detections of a ``DetectionOutput`` blob, ``(n, 7)`` float64.

    Left out: Caffe's placeholder for an image without detections (label
    ``-1``) and OpenCV's padding (rows of zeros).
    """
    rows = numpy.asarray(blob, dtype=numpy.float64).reshape(-1, 7)
    keep = (rows[:, 0] >= 0) & (rows[:, 1] >= 0) & (rows != 0).any(axis=1)
    return rows[keep]


def _pair_detections(ours: numpy.ndarray, theirs: numpy.ndarray,
                     tolerance: float
                     ) -> Tuple[numpy.ndarray, numpy.ndarray, List[float]]:
    """Greedy pairing, best scores first: ``(our unpaired mask, their
    unpaired mask, differences of the pairs)``."""
    free = numpy.ones(len(theirs), bool)
    lonely = numpy.zeros(len(ours), bool)
    errors: List[float] = []
    for i in numpy.argsort(-ours[:, 2], kind='stable'):
        row = ours[i]
        same = free & (theirs[:, 0] == row[0]) & (theirs[:, 1] == row[1])
        error = numpy.where(same, numpy.abs(theirs[:, 2:7] - row[2:7]).max(
            axis=1, initial=0.0), numpy.inf)
        j = int(numpy.argmin(error)) if len(error) else -1
        if j >= 0 and error[j] <= tolerance:
            free[j] = False
            errors.append(float(error[j]))
        else:
            lonely[i] = True
    return lonely, free, errors


def _at_cut(rows: numpy.ndarray, ours: numpy.ndarray, theirs: numpy.ndarray,
            tolerance: float, keep_top_k: int,
            confidence_threshold: Optional[float]) -> numpy.ndarray:
    """Which ``rows`` lie where rounding may decide whether a side keeps
    them: at the confidence threshold, or at the lowest score kept in an
    image whose list ``keep_top_k`` cut."""
    near = numpy.zeros(len(rows), bool)
    if confidence_threshold is not None:
        near |= rows[:, 2] <= confidence_threshold + tolerance
    for image in numpy.unique(rows[:, 0]):
        scores = [side[side[:, 0] == image, 2] for side in (ours, theirs)]
        if keep_top_k < 0 or max(len(s) for s in scores) < keep_top_k:
            continue
        cut = max(s.min() for s in scores if len(s))
        near |= (rows[:, 0] == image) & (rows[:, 2] <= cut + tolerance)
    return near


def compare_detections(ours: numpy.ndarray, theirs: numpy.ndarray,
                       tolerance: float = DEFAULT_DETECTION_TOLERANCE,
                       keep_top_k: int = -1,
                       confidence_threshold: Optional[float] = None
                       ) -> DetectionMatch:
    """Compares two ``DetectionOutput`` blobs as sets of detections.

    Args:
        ours: Rows ``image_id, label, score, xmin, ymin, xmax, ymax`` in
            any order (any shape ending in 7).
        theirs: The same from the reference (OpenCV's padded blob).
        tolerance: The largest difference of score or corner (fractions of
            the image) in a pair.
        keep_top_k: The layer's ``keep_top_k`` (-1: none): where a list was
            cut, detections at the lowest kept score may be on one side
            only.
        confidence_threshold: The layer's threshold, if set: detections
            at it may be on one side only.

    Returns:
        The :class:`DetectionMatch`.
    """
    mine, other = detection_rows(ours), detection_rows(theirs)
    lonely, free, errors = _pair_detections(mine, other, tolerance)
    excused_mine = _at_cut(mine[lonely], mine, other, tolerance, keep_top_k,
                           confidence_threshold)
    excused_other = _at_cut(other[free], mine, other, tolerance, keep_top_k,
                            confidence_threshold)
    return DetectionMatch(
        mine, other, len(errors), max(errors, default=0.0),
        mine[lonely][~excused_mine], other[free][~excused_other],
        int(excused_mine.sum() + excused_other.sum()), tolerance)


def _detection_limits(layer: caffe_pb2.LayerParameter
                      ) -> Tuple[int, Optional[float]]:
    """``(keep_top_k, confidence_threshold or None)`` of a layer."""
    p = layer.detection_output_param
    return p.keep_top_k, (p.confidence_threshold
                          if p.HasField('confidence_threshold') else None)


def _external_inputs(net: CaffeNet) -> List[str]:
    """Blobs the net consumes but no earlier layer produces.

    Declared inputs (``net.inputs``) come first, in their order; a declared
    input no layer uses is left out (OpenCV rejects a net fed one).
    """
    produced = set()
    consumed: List[str] = []
    for name, bottoms, tops in net.layers:
        if name not in net.forwards:   # a data layer
            continue
        for b in bottoms:
            if b not in produced and b not in consumed:
                consumed.append(b)
        produced.update(tops)
    declared = [name for name in net.inputs if name in consumed]
    return declared + [name for name in consumed if name not in declared]


def resolve_input_shapes(net: CaffeNet, input_shape: InputShape = None
                         ) -> Dict[str, Shape]:
    """The shape to feed each input blob that can be fed.

    In order of precedence: ``input_shape`` (a mapping by blob name, or one
    shape for the net's first input), the shape the net declares
    (``net.inputs``), what a data layer's parameters imply (MemoryData's
    channels/height/width, batch 1). Inputs with no known shape (``label``)
    are left out; the layers that need them are skipped.

    Raises:
        OpenCVComparisonError: if no input can be fed, or a name in
            ``input_shape`` is not an input of the net.
        InputShapeError: a negative dimension, or inputs too large
            (:func:`check_input_shapes`).
    """
    inputs = _external_inputs(net)
    if input_shape is not None and not isinstance(input_shape, Mapping):
        if not inputs:
            raise OpenCVComparisonError('the net has no inputs')
        input_shape = {inputs[0]: input_shape}
    given = {k: tuple(int(d) for d in v)
             for k, v in (input_shape or {}).items()}
    unknown = sorted(set(given) - set(inputs))
    if unknown:
        raise OpenCVComparisonError(
            'input_shape names {} but the net\'s inputs are {}'.format(
                unknown, inputs))
    implied: Dict[str, Shape] = {}   # by data layers, for their first top
    for layer in net.caffe_layers:
        m = layer.memory_data_param
        dims = (m.channels, m.height, m.width)
        if layer.top and layer.type == 'MemoryData' and all(dims):
            implied.setdefault(layer.top[0], (1,) + dims)
        elif layer.top and layer.type == 'DummyData' and \
                layer.dummy_data_param.shape:
            implied.setdefault(layer.top[0],
                               tuple(layer.dummy_data_param.shape[0].dim))
    shapes: Dict[str, Shape] = {}
    for name in inputs:
        shape = given.get(name) or net.inputs.get(name) or implied.get(name)
        if shape:
            shapes[name] = tuple(int(d) for d in shape)
        else:
            logger.info('input %r has no known shape; layers that need it '
                        'are skipped', name)
    if not shapes:
        raise OpenCVComparisonError(
            'the shape of the net\'s input{} {} is unknown: give '
            'input_shape (--input-shape)'.format(
                's' if len(inputs) > 1 else '', inputs))
    check_input_shapes(shapes)
    return shapes


def _dims(shape: Sequence[int]) -> str:
    return 'x'.join(str(d) for d in shape) or 'scalar'


def _described(shapes: Mapping[str, Sequence[int]]) -> str:
    return ', '.join('{} {}'.format(name, _dims(shape))
                     for name, shape in shapes.items())


def check_input_shapes(shapes: Mapping[str, Sequence[int]]) -> None:
    """Checks input shapes before anything of that size is allocated.

    Raises:
        InputShapeError: a negative dimension (a prototxt's ``dim: -3``),
            or more than :data:`MAX_INPUT_VALUES` values in all.
    """
    for name, shape in shapes.items():
        if any(d < 0 for d in shape):
            raise InputShapeError(
                'input {!r} has the shape {}: dimensions cannot be negative; '
                'give its size as input_shape (--input-shape)'.format(
                    name, _dims(shape)))
    total = sum(math.prod(shape) for shape in shapes.values())
    if total > MAX_INPUT_VALUES:
        raise InputShapeError(
            'inputs {} hold {:,} values ({:.1f} GiB as float32), more than '
            'the {:,} fed to a net at most; give a smaller input_shape '
            '(--input-shape)'.format(_described(shapes), total,
                                     total * 4 / 2 ** 30, MAX_INPUT_VALUES))


def random_inputs(shapes: Mapping[str, Shape], seed: int = 0,
                  scale: float = 1.0) -> Dict[str, numpy.ndarray]:
    """float32 inputs, uniform in ``[-scale, scale)``, from ``seed``.

    Inputs are drawn in the order of ``shapes`` from one
    ``numpy.random.RandomState(seed)``.
    """
    rs = numpy.random.RandomState(seed)
    return {name: (rs.uniform(-1.0, 1.0, shape) * scale).astype(
        numpy.float32) for name, shape in shapes.items()}


def step_outputs(net: CaffeNet, inputs: Mapping[str, numpy.ndarray]
                 ) -> Tuple[Dict[Tuple[str, str], numpy.ndarray], List[str]]:
    """Runs ``net`` one layer at a time, recording every layer's tops.

    Under the current Chainer configuration. Layers whose bottoms are not
    available (a loss head without ``label``) are skipped, as in
    ``CaffeNet.forward``.

    Returns:
        ``({(layer, top): array}, skipped layer names)``; an in-place
        layer's entry is the blob's value right after that layer.

    Raises:
        InputShapeError: a layer fails on what reaches it (a pooling
            window larger than its input, an InnerProduct of another
            size...); the message names the layer and the shapes.
    """
    variables: Dict[str, chainer.Variable] = {
        name: chainer.Variable(net.device.send(numpy.asarray(value)),
                               requires_grad=False)
        for name, value in inputs.items()}
    recorded: Dict[Tuple[str, str], numpy.ndarray] = {}
    skipped: List[str] = []
    for name, bottoms, tops in net.layers:
        if name not in net.forwards:   # a data layer
            continue
        if any(b not in variables for b in bottoms):
            skipped.append(name)
            continue
        try:
            ys = net.forwards[name](*(variables[b] for b in bottoms))
        except Exception as e:   # Chainer's checks: many kinds, many lines
            raise _forward_error(
                net, name, {b: variables[b].shape for b in bottoms},
                {k: numpy.shape(v) for k, v in inputs.items()}, e) from e
        for top, y in zip(tops, ys):
            variables[top] = y
            recorded[(name, top)] = numpy.asarray(
                chainer.backend.CpuDevice().send(y.array))
    return recorded, skipped


def _forward_error(net: CaffeNet, layer: str,
                   bottoms: Mapping[str, Sequence[int]],
                   inputs: Mapping[str, Sequence[int]],
                   error: Exception) -> InputShapeError:
    """One line for a layer that failed on what reached it."""
    types = {lp.name: lp.type for lp in net.caffe_layers}
    detail = ' '.join(str(error).split()).rstrip('.')
    if len(detail) > 300:
        detail = detail[:297] + '...'
    return InputShapeError(
        'layer {!r} ({}) cannot run on {} (from inputs {}): {}{}; give '
        'another input_shape (--input-shape)'.format(
            layer, types.get(layer, '?'), _described(bottoms),
            _described(inputs), type(error).__name__,
            ': ' + detail if detail else ''))


def deploy_prototxt(net: CaffeNet, shapes: Mapping[str, Shape],
                    skipped: Iterable[str] = ()) -> str:
    """A V2 deploy prototxt (text) of ``net``'s structure for OpenCV.

    Used when no prototxt is given: the net's data layers become one
    ``Input`` layer declaring ``shapes``; layers in ``skipped`` (and any
    that need their tops) are dropped; phase fields and rules are cleared;
    and BatchNorm's ``use_global_stats`` is cleared so that the TEST phase
    default (stored statistics) applies, as in our net under
    ``train=False``.
    """
    from google.protobuf import text_format
    out = caffe_pb2.NetParameter(name=net.name or 'net')
    data = out.layer.add(name='input', type='Input')
    for name, shape in shapes.items():
        data.top.append(name)
        data.input_param.shape.add().dim.extend(shape)
    available = set(shapes)
    skipped = set(skipped)
    for layer in net.caffe_layers:
        if layer.type in DATA_LAYER_TYPES or layer.name in skipped or \
                any(b not in available for b in layer.bottom):
            continue
        copy = out.layer.add()
        copy.CopyFrom(layer)
        for field in ('phase', 'include', 'exclude'):
            copy.ClearField(field)
        if copy.type == 'BatchNorm':
            copy.batch_norm_param.ClearField('use_global_stats')
        available.update(copy.top)
    return text_format.MessageToString(out)


def opencv_outputs(model: PathLike, prototxt: PathLike,
                   inputs: Mapping[str, numpy.ndarray],
                   layers: Optional[Iterable[str]] = None
                   ) -> Dict[str, List[numpy.ndarray]]:
    """Every output of the named layers (default all) as OpenCV computes.

    Raises:
        OpenCVUnavailableError: without OpenCV.
        OpenCVComparisonError: if OpenCV cannot read or run the net.
    """
    cv2 = import_cv2()
    try:
        cvnet = cv2.dnn.readNetFromCaffe(os.fspath(prototxt),
                                         os.fspath(model))
    except cv2.error as e:
        raise OpenCVComparisonError('OpenCV cannot read {} with {}: {}'.format(
            prototxt, model, str(e).strip())) from e
    # Plain CPU kernels, each layer's own output (no fusion, no Winograd).
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    cvnet.enableFusion(False)
    if hasattr(cvnet, 'enableWinograd'):   # OpenCV >= 4.7
        cvnet.enableWinograd(False)
    exposed = list(cvnet.getLayerNames())
    if layers is not None:
        wanted = set(layers)
        exposed = [n for n in exposed if n in wanted]
    if not exposed:
        return {}
    try:
        for name, value in inputs.items():
            cvnet.setInput(numpy.ascontiguousarray(value, numpy.float32),
                           name)
        outs = {name: [numpy.asarray(o) for o in out]
                for name, out in zip(exposed, cvnet.forwardAndRetrieve(
                    exposed))}
        # OpenCV keeps only output 0 of each requested layer from being
        # reused by later layers; the other outputs of a multi-top layer
        # (Split, Slice) are read from a run that stops at that layer.
        for name in exposed:
            if len(outs[name]) > 1:
                outs[name] = [numpy.asarray(o) for o in
                              cvnet.forwardAndRetrieve([name])[0]]
    except cv2.error as e:
        raise OpenCVComparisonError('OpenCV cannot run {}: {}'.format(
            prototxt, str(e).strip())) from e
    return outs


def _comparison_rows(net: CaffeNet,
                     ours: Mapping[Tuple[str, str], numpy.ndarray],
                     theirs: Mapping[str, List[numpy.ndarray]],
                     skipped: Sequence[str], wanted: Optional[set],
                     detection_tolerance: float
                     ) -> Tuple[List[ComparisonRow], List[str]]:
    """The rows of :func:`compare_with_opencv`, and the layers OpenCV did
    not expose."""
    caffe_layers = {layer.name: layer for layer in net.caffe_layers}
    rows: List[ComparisonRow] = []
    not_exposed: List[str] = []
    for name, bottoms, tops in net.layers:
        if name not in net.forwards or (wanted is not None and
                                        name not in wanted):
            continue
        outs = theirs.get(name)
        if outs is None and name not in skipped:
            not_exposed.append(name)
        layer = caffe_layers.get(name)
        for i, top in enumerate(tops):
            value = ours.get((name, top))
            shape = tuple(value.shape) if value is not None else ()
            if value is None or outs is None or i >= len(outs):
                rows.append(ComparisonRow(name, top, shape, None, None))
            elif layer is not None and layer.type == 'DetectionOutput':
                # Not the same layout: OpenCV sorts by score and pads.
                match = compare_detections(value, outs[i],
                                           detection_tolerance,
                                           *_detection_limits(layer))
                rows.append(ComparisonRow(
                    name, top, shape, match.max_abs,
                    0.0 if match.ok else math.inf, match))
            else:
                rows.append(_blob_row(name, top, value, outs[i]))
    return rows, not_exposed


def _blob_row(layer: str, top: str, value: numpy.ndarray,
              reference: numpy.ndarray) -> ComparisonRow:
    """One blob compared element by element."""
    if reference.size != value.size:
        logger.warning('%s/%s: our shape %s, OpenCV\'s %s', layer, top,
                       value.shape, reference.shape)
    elif reference.shape != value.shape:
        logger.debug('%s/%s: our shape %s, OpenCV\'s %s (same values '
                     'compared)', layer, top, value.shape, reference.shape)
    max_abs, rel = compare_arrays(value, reference)
    return ComparisonRow(layer, top, tuple(value.shape), max_abs, rel)


def compare_with_opencv(model: PathLike, prototxt: Optional[PathLike] = None,
                        input_shape: InputShape = None, seed: int = 0,
                        layers: Optional[Iterable[str]] = None, *,
                        scale: float = 1.0,
                        inputs: Optional[Mapping[str, numpy.ndarray]] = None,
                        net: Optional[CaffeNet] = None,
                        detection_tolerance: float =
                        DEFAULT_DETECTION_TOLERANCE
                        ) -> List[ComparisonRow]:
    """Compares every layer's output of our net with OpenCV's.

    Both load ``model`` (+ ``prototxt``) and get the same random input; ours
    runs with ``train=False`` and without backprop.

    Args:
        model: The ``.caffemodel``.
        prototxt: The deploy prototxt. Without it, OpenCV reads a prototxt
            written from the caffemodel's own structure
            (:func:`deploy_prototxt`).
        input_shape: The input's shape (for the net's first input) or a
            mapping of input blob to shape; default: what the net declares.
        seed: Seed of the random input (:func:`random_inputs`).
        layers: Only compare these layers (Caffe names); default all.
        scale: Inputs are uniform in ``[-scale, scale)``.
        inputs: Use these arrays (blob name to array) instead of random
            ones.
        net: An already loaded net of ``model`` + ``prototxt`` (or of an
            equivalent net with the same layer names), to avoid loading it
            again.
        detection_tolerance: For ``DetectionOutput`` blobs, which are
            compared as detections (:func:`compare_detections`): the
            largest difference of a score or corner.

    Returns:
        One :class:`ComparisonRow` per top of each layer, in execution
        order; ``max_abs`` and ``rel_l2`` None where not compared.

    Raises:
        OpenCVUnavailableError: without OpenCV.
        OpenCVComparisonError: OpenCV cannot read or run the net; unknown
            input shape.
        CaffeModelError: our loader cannot load the net.
    """
    import_cv2()   # fail before the (slower) loading
    start = time.perf_counter()
    if net is None:
        net = load_caffe(model, prototxt)
    if inputs is None:
        inputs = random_inputs(resolve_input_shapes(net, input_shape), seed,
                               scale)
    else:
        used = set(_external_inputs(net))
        inputs = {k: numpy.asarray(v, numpy.float32)
                  for k, v in inputs.items() if k in used}
    wanted = None if layers is None else set(layers)
    unknown = (wanted or set()) - {name for name, _, _ in net.layers}
    if unknown:
        raise OpenCVComparisonError('no layers named {} in the net'.format(
            sorted(unknown)))
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        ours, skipped = step_outputs(net, inputs)
    loaded = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='chainer_finetune-verify-') \
            as tmp:
        if prototxt is None:
            prototxt = os.path.join(tmp, 'deploy.prototxt')
            with open(prototxt, 'w', encoding='utf-8') as f:
                f.write(deploy_prototxt(
                    net, {k: v.shape for k, v in inputs.items()}, skipped))
        theirs = opencv_outputs(model, prototxt, inputs, wanted)
    rows, not_exposed = _comparison_rows(net, ours, theirs, skipped, wanted,
                                         detection_tolerance)
    if skipped:
        logger.info('not run for lack of an input: %s', ', '.join(skipped))
    if not_exposed:
        logger.info('OpenCV does not expose (not compared): %s',
                    ', '.join(not_exposed))
    logger.info('compared %d blobs with OpenCV in %.2f s (ours %.2f s)',
                sum(r.compared for r in rows), time.perf_counter() - start,
                loaded - start)
    return rows


def worst(rows: Iterable[ComparisonRow]) -> Optional[ComparisonRow]:
    """The compared blob with the largest ``rel_l2`` (None if none).

    ``DetectionOutput`` rows, whose ``rel_l2`` is a verdict, are left out.
    """
    compared = [r for r in rows if r.compared and r.detections is None]
    return max(compared, key=lambda r: r.rel_l2) if compared else None


def format_comparison(rows: Sequence[ComparisonRow],
                      tolerance: Optional[float] = None) -> str:
    """A text table of the rows, with a summary line.

    Rows beyond ``tolerance`` (when given) are marked ``FAIL``; rows not
    compared say so. A ``DetectionOutput`` blob is one row whose last
    column is the verdict on its detections (:meth:`DetectionMatch.describe`,
    ``FAIL`` first when they differ).
    """
    header = ('layer', 'blob', 'shape', 'max_abs', 'rel_l2', '')
    table = [header]
    for r in rows:
        shape = 'x'.join(map(str, r.shape)) or '-'
        if not r.compared:
            table.append((r.layer, r.blob, shape, '-', '-', 'not compared'))
            continue
        if r.detections is not None:
            table.append((r.layer, r.blob, shape, '{:.3g}'.format(r.max_abs),
                          '-', ('' if r.detections.ok else 'FAIL: ') +
                          r.detections.describe()))
            continue
        table.append((r.layer, r.blob, shape, '{:.3g}'.format(r.max_abs),
                      '{:.3g}'.format(r.rel_l2),
                      'FAIL' if tolerance is not None and
                      not r.rel_l2 <= tolerance else ''))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in table]
    compared = [r for r in rows if r.compared]
    summary = '{} blobs compared, {} not compared'.format(
        len(compared), len(rows) - len(compared))
    w = worst(rows)
    if w is not None:
        summary += '; worst rel_l2 {:.3g} at {} ({})'.format(
            w.rel_l2, w.layer, w.blob)
    if tolerance is not None:
        failed = sum(1 for r in compared if not r.rel_l2 <= tolerance)
        summary += '; {} beyond tolerance {:g}'.format(failed, tolerance)
    lines.append(summary)
    return '\n'.join(lines)


def parse_shape(text: str) -> Shape:
    """``'1,3,224,224'`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``.

    Raises:
        argparse.ArgumentTypeError: for anything but positive integers.
    """
    try:
        shape = tuple(int(d) for d in text.replace('x', ',').split(',')
                      if d.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            'expected a shape of positive integers separated by commas, '
            'e.g. 1,3,224,224; got {!r}'.format(text))
    return shape


def parse_tolerance(text: str) -> float:
    """A tolerance: a number >= 0 (``inf`` accepts any difference).

    Raises:
        argparse.ArgumentTypeError: for NaN (every comparison with it
            fails), a negative number or anything but a number.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(
            'expected a tolerance >= 0, e.g. 1e-4; got {!r}'.format(text))
    return value


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments :func:`run_verify` reads to ``parser``."""
    parser.add_argument('model', metavar='MODEL',
                        help='the .caffemodel to check, or the name of a '
                             'known model (fetched once)')
    parser.add_argument('--prototxt', metavar='PROTOTXT',
                        help='the deploy prototxt (default: a known '
                             "model's own, else the caffemodel's own "
                             'structure)')
    parser.add_argument('--tolerance', type=parse_tolerance,
                        default=DEFAULT_TOLERANCE,
                        help='largest relative L2 error allowed per blob '
                             '(default %(default)g)')
    parser.add_argument('--detection-tolerance', type=parse_tolerance,
                        default=DEFAULT_DETECTION_TOLERANCE,
                        dest='detection_tolerance',
                        help='largest difference of a detection\'s score '
                             'or corner (DetectionOutput blobs, compared as '
                             'detections; default %(default)g)')
    parser.add_argument('--input-shape', type=parse_shape, metavar='SHAPE',
                        help='shape of the first input, e.g. 1,3,224,224 '
                             '(default: as the net declares)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the random input (default 0)')
    parser.add_argument('--input-scale', type=float, default=1.0,
                        help='inputs are uniform in [-SCALE, SCALE) '
                             '(default 1)')
    parser.add_argument('--layer', action='append', dest='layers',
                        metavar='NAME',
                        help='compare only this layer (repeatable)')
    parser.add_argument('--failed-only', action='store_true',
                        dest='failed_only',
                        help='print only the blobs beyond the tolerance '
                             '(default: every blob)')


def run_verify(args: argparse.Namespace, out: Optional[TextIO] = None
               ) -> int:
    """The ``chainer-finetune verify`` command.

    Args:
        args: Parsed arguments (see :func:`add_verify_arguments`):
            ``model`` (MODEL: a path, or a name of
            :data:`chainer_finetune.hub.MODELS`, fetched once),
            ``prototxt`` (None or a path), ``tolerance`` (float, relative
            L2, default 1e-4), ``input_shape`` (None or a tuple of ints);
            optionally ``seed``, ``input_scale``, ``layers``,
            ``failed_only`` and ``detection_tolerance``.
        out: Where the table goes (default ``sys.stdout``).

    Returns:
        0 when every compared blob is within the tolerance, 1 when one is
        beyond it, 2 when the comparison cannot run (no OpenCV, unreadable
        model, unknown input shape).
    """
    out = sys.stdout if out is None else out
    tolerance = getattr(args, 'tolerance', DEFAULT_TOLERANCE)
    try:
        for value in (tolerance, getattr(args, 'detection_tolerance', 0.0)):
            parse_tolerance(str(value))
    except argparse.ArgumentTypeError as e:
        logger.error('cannot compare: %s', e)
        return 2
    try:
        model, prototxt, _ = hub.locate_model(
            args.model, getattr(args, 'prototxt', None))
        rows = compare_with_opencv(
            model, prototxt, getattr(args, 'input_shape', None),
            getattr(args, 'seed', 0), getattr(args, 'layers', None),
            scale=getattr(args, 'input_scale', 1.0),
            detection_tolerance=getattr(args, 'detection_tolerance',
                                        DEFAULT_DETECTION_TOLERANCE))
    except ChainerFinetuneError as e:
        logger.error('cannot compare: %s', e)
        return 2
    failed = [r for r in rows if r.compared and not r.rel_l2 <= tolerance]
    lines = format_comparison(rows, tolerance).splitlines()
    if getattr(args, 'failed_only', False):
        # Only the failed rows, but the summary line describes every row.
        shown = format_comparison(failed, tolerance).splitlines()[:-1]
        lines = (shown if failed else []) + lines[-1:]
    out.write('\n'.join(lines) + '\n')
    out.write('{} ({} blob{} beyond tolerance {:g})\n'.format(
        'FAIL' if failed else 'OK', len(failed),
        '' if len(failed) == 1 else 's', tolerance))
    return 1 if failed else 0
