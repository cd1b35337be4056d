#!/usr/bin/env python3
"""Regenerate the real-model coverage table included by docs/coverage.rst.

Usage (from anywhere; paths are resolved relative to this repository)::

    python tools/coverage_table.py          # rewrite docs/coverage_table.inc
    python tools/coverage_table.py --print  # only print it

For every known model (:data:`chainer_finetune.hub.MODELS`: the real models
the tests fetch) and each of the four scikit-image photographs (data set
``photos``), the photograph becomes the model's input blob as OpenCV makes
it (``cv2.dnn.blobFromImage`` with the model's declared size, mean and
scale, as tests/detector_files.py does), and
:func:`chainer_finetune.caffe.verify.compare_with_opencv` compares every
intermediate blob of our net with OpenCV's. The table gives per model its
package, its layer types with counts, the worst relative L2 error over all
blobs and photos, and, for a detector, whether our ``DetectionOutput``
rows are OpenCV's: OpenCV pads that blob with zero rows up to
``keep_top_k``, so it is compared row for row over the real detections
(score above 0), not as a blob.

The models, photographs and cache are those of tools/detection_pictures.py
(the tests' cache unless ``$CHAINER_FINETUNE_CACHE`` is set).
"""

import argparse
import collections
import logging
import os
import platform
import sys
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy

# The sibling script puts this checkout first on the path and imports
# chainer_finetune, which Chainer needs imported first on NumPy 2.
from detection_pictures import PHOTOS, ROOT, cache_root
from chainer_finetune import detect, hub, load_caffe  # noqa: E402
import chainer  # noqa: E402
from chainer_finetune.caffe import verify  # noqa: E402
from chainer_finetune.data import read_image  # noqa: E402

logger = logging.getLogger('coverage_table')

OUTPUT = os.path.join(ROOT, 'docs', 'coverage_table.inc')
#: The layer type whose blob is compared row for row instead.
DETECTION_TYPE = 'DetectionOutput'


class Worst(NamedTuple):
    """The largest relative L2 error of one model over the photos."""

    rel_l2: float
    blob: str
    photo: str
    compared: int   # blobs compared per photo


class DetectionMatch(NamedTuple):
    """Our detections against OpenCV's over the photos."""

    ours: int        # our detections, all photos together
    theirs: int      # OpenCV's
    error: float     # the worst row's distance to its closest partner


def cache_dir() -> str:
    """Where the models and photos are fetched to (the tests' cache)."""
    return os.path.join(cache_root(), 'models')


def opencv_blob(model: hub.KnownModel, path: str) -> numpy.ndarray:
    """OpenCV's input blob of a photo for a known model."""
    import cv2
    bgr = numpy.ascontiguousarray(read_image(path)[:, :, ::-1])
    return cv2.dnn.blobFromImage(
        bgr, model.input_scale or 1.0, (model.input_size,) * 2,
        model.mean_bgr, swapRB=False)


def layer_counts(net) -> List[Tuple[str, int]]:
    """``(type, count)`` of the net's layers, most frequent first."""
    counts = collections.Counter(layer.type for layer in net.caffe_layers)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def real_rows(rows: numpy.ndarray) -> numpy.ndarray:
    """The detection rows that are detections (no padding, no ``-1`` row)."""
    rows = numpy.asarray(rows, numpy.float64).reshape(-1, 7)
    return rows[(rows[:, 0] >= 0) & (rows[:, 2] > 0)]


def detection_rows(files: hub.ModelFiles, net, blob: numpy.ndarray
                   ) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Our and OpenCV's real detection rows for one input blob."""
    import cv2
    cvnet = cv2.dnn.readNetFromCaffe(files.prototxt, files.caffemodel)
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.enableFusion(False)
    cvnet.setInput(blob)
    theirs = cvnet.forward()
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        ours, = net(inputs={'data': blob},
                    outputs=[detect.detection_blob(net)])
    return real_rows(ours.array), real_rows(theirs)


def partner_error(rows: numpy.ndarray, others: numpy.ndarray) -> float:
    """The largest distance of a row to its closest partner in ``others``.

    A partner has the same label; the distance is the largest absolute
    difference of score and corners (``inf`` without a partner). Rows are
    matched, not compared in order: Caffe writes them class by class,
    OpenCV by score.
    """
    worst = 0.0
    for row in rows:
        partners = others[others[:, 1] == row[1]]
        if not len(partners):
            return float('inf')
        worst = max(worst, float(
            numpy.abs(partners[:, 2:] - row[2:]).max(axis=1).min()))
    return worst


def match_detections(pairs: List[Tuple[numpy.ndarray, numpy.ndarray]]
                     ) -> DetectionMatch:
    """Sums up the comparison of the detections over the photos."""
    return DetectionMatch(
        sum(len(ours) for ours, _ in pairs),
        sum(len(theirs) for _, theirs in pairs),
        max(max(partner_error(ours, theirs), partner_error(theirs, ours))
            for ours, theirs in pairs))


def measure(name: str, photos: Dict[str, str]) -> dict:
    """One model's row of the table."""
    model = hub.MODELS[name]
    files = hub.fetch_model(name, cache_dir())
    net = load_caffe(files.caffemodel, files.prototxt)
    detection_layers = {layer.name for layer in net.caffe_layers
                        if layer.type == DETECTION_TYPE}
    worst: Optional[Worst] = None
    pairs = []
    for photo in PHOTOS:
        blob = opencv_blob(model, photos[photo])
        rows = [row for row in verify.compare_with_opencv(
            files.caffemodel, files.prototxt, inputs={'data': blob}, net=net)
            if row.compared and row.layer not in detection_layers]
        top = verify.worst(rows)
        logger.info('%s on %s: %d blobs, worst rel-L2 %.3g (%s)', name,
                    photo, len(rows), top.rel_l2, top.blob)
        if worst is None or top.rel_l2 > worst.rel_l2:
            worst = Worst(top.rel_l2, top.blob, photo, len(rows))
        if detection_layers:
            pairs.append(detection_rows(files, net, blob))
    return {'name': name, 'model': model, 'layers': layer_counts(net),
            'worst': worst,
            'detections': match_detections(pairs) if pairs else None}


def input_text(model: hub.KnownModel) -> str:
    """``224x224 BGR - (104, 117, 123)``, with the scale when declared."""
    mean = ', '.join('{:g}'.format(m) for m in model.mean_bgr)
    text = '{0}x{0} BGR - ({1})'.format(model.input_size, mean)
    if model.input_scale:
        text = '({}) * {:g}'.format(text, model.input_scale)
    return text


def detection_text(match: Optional[DetectionMatch]) -> str:
    if match is None:
        return 'no ``DetectionOutput``'
    return ('{} rows, OpenCV {}; each has a partner of its label within '
            '{:.1e} (score and corners)'.format(match.ours, match.theirs,
                                                match.error))


def table(rows: List[dict]) -> str:
    """The rows as an RST list-table, with the versions measured on."""
    import cv2
    lines = [
        '.. Generated by tools/coverage_table.py; do not edit by hand.',
        '',
        '.. list-table:: Real models against OpenCV {} (NumPy {}, {} {})'
        .format(cv2.__version__, numpy.__version__,
                platform.system(), platform.machine()),
        '   :header-rows: 1',
        '   :widths: 14 18 34 18 16',
        '',
        '   * - Model',
        '     - Package, input',
        '     - Layer types (count)',
        '     - Worst blob rel-L2 (4 photos)',
        '     - ``DetectionOutput`` rows']
    for row in rows:
        worst = row['worst']
        layers = ', '.join('{} ({})'.format(kind, count)
                           for kind, count in row['layers'])
        lines += [
            '   * - ``{}``'.format(row['name']),
            '     - ``{}``; {}'.format(row['model'].requirement,
                                       input_text(row['model'])),
            '     - {}; {} layers'.format(
                layers, sum(count for _, count in row['layers'])),
            '     - {:.1e} (``{}``, {}); {} blobs compared per photo'.format(
                worst.rel_l2, worst.blob, worst.photo, worst.compared),
            '     - {}'.format(detection_text(row['detections']))]
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--print', action='store_true', dest='only_print',
                        help='print the table instead of writing it')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    photos = hub.fetch_dataset('photos', cache_dir())
    text = table([measure(name, photos) for name in hub.MODELS])
    if args.only_print:
        sys.stdout.write(text)
        return 0
    with open(OUTPUT, 'w', encoding='utf-8') as f:
        f.write(text)
    logger.info('wrote %s', OUTPUT)
    return 0


if __name__ == '__main__':
    sys.exit(main())
