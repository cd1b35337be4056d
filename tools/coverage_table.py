#!/usr/bin/env python3
"""Regenerate the real-model coverage table included by docs/coverage.rst.

Usage (from anywhere; paths are resolved relative to this repository)::

    python tools/coverage_table.py          # rewrite docs/coverage_table.inc
                                            # and the chart of the same run
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
``keep_top_k``, so verify compares it as detections (paired by image and
label), not as a blob.

The same run writes ``docs/_static/pictures/parity.json`` (the worst
rel-L2 per model and photograph) and draws it as ``parity.svg``
(``tools/pictures.py parity`` redraws it from the JSON).

The models, photographs and cache are those of tools/detection_pictures.py
(the tests' cache unless ``$CHAINER_FINETUNE_CACHE`` is set).
"""

import argparse
import collections
import json
import logging
import os
import platform
import sys
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy

# The sibling script puts this checkout first on the path and imports
# chainer_finetune, which Chainer needs imported first on NumPy 2.
from detection_pictures import PHOTOS, ROOT, cache_root
import pictures  # noqa: E402
from chainer_finetune import hub, load_caffe  # noqa: E402
from chainer_finetune.caffe import verify  # noqa: E402
from chainer_finetune.data import read_image  # noqa: E402

logger = logging.getLogger('coverage_table')

OUTPUT = os.path.join(ROOT, 'docs', 'coverage_table.inc')


class Worst(NamedTuple):
    """The largest relative L2 error of one model over the photos."""

    rel_l2: float
    blob: str
    photo: str
    compared: int   # blobs compared per photo


class DetectionSummary(NamedTuple):
    """Our detections against OpenCV's over the photos
    (:func:`chainer_finetune.caffe.verify.compare_detections` per photo)."""

    ours: int        # our detections, all photos together
    theirs: int      # OpenCV's
    error: float     # the largest difference over the pairs; inf if unpaired


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


def summarize(matches: List[verify.DetectionMatch]) -> DetectionSummary:
    """Sums up the comparison of the detections over the photos."""
    return DetectionSummary(
        sum(len(m.ours) for m in matches),
        sum(len(m.theirs) for m in matches),
        max(m.max_abs if m.ok else float('inf') for m in matches))


def measure(name: str, photos: Dict[str, str]) -> dict:
    """One model's row of the table."""
    model = hub.MODELS[name]
    files = hub.fetch_model(name, cache_dir())
    net = load_caffe(files.caffemodel, files.prototxt)
    worst: Optional[Worst] = None
    by_photo = {}
    matches = []
    for photo in PHOTOS:
        blob = opencv_blob(model, photos[photo])
        rows = [row for row in verify.compare_with_opencv(
            files.caffemodel, files.prototxt, inputs={'data': blob}, net=net)
            if row.compared]
        # The DetectionOutput blob is compared as detections (OpenCV pads
        # it with zero rows), the other blobs by relative L2 error.
        matches += [row.detections for row in rows if row.detections]
        blobs = [row for row in rows if row.detections is None]
        top = verify.worst(blobs)
        logger.info('%s on %s: %d blobs, worst rel-L2 %.3g (%s)', name,
                    photo, len(blobs), top.rel_l2, top.blob)
        by_photo[photo] = float(top.rel_l2)
        if worst is None or top.rel_l2 > worst.rel_l2:
            worst = Worst(top.rel_l2, top.blob, photo, len(blobs))
    return {'name': name, 'model': model, 'layers': layer_counts(net),
            'worst': worst, 'worst_by_photo': by_photo,
            'detections': summarize(matches) if matches else None}


def input_text(model: hub.KnownModel) -> str:
    """``224x224 BGR - (104, 117, 123)``, with the scale when declared."""
    mean = ', '.join('{:g}'.format(m) for m in model.mean_bgr)
    text = '{0}x{0} BGR - ({1})'.format(model.input_size, mean)
    if model.input_scale:
        text = '({}) * {:g}'.format(text, model.input_scale)
    return text


def detection_text(match: Optional[DetectionSummary]) -> str:
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


def chart_data(rows: List[dict]) -> dict:
    """What ``tools/pictures.py parity`` draws: the worst rel-L2 per model
    and photo, with the versions measured on."""
    import cv2
    return {'opencv': cv2.__version__, 'numpy': numpy.__version__,
            'photos': list(PHOTOS),
            'models': [{'name': row['name'],
                        'compared': row['worst'].compared,
                        'worst_by_photo': row['worst_by_photo']}
                       for row in rows]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--print', action='store_true', dest='only_print',
                        help='print the table instead of writing it')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    photos = hub.fetch_dataset('photos', cache_dir())
    rows = [measure(name, photos) for name in hub.MODELS]
    text = table(rows)
    if args.only_print:
        sys.stdout.write(text)
        return 0
    with open(OUTPUT, 'w', encoding='utf-8') as f:
        f.write(text)
    logger.info('wrote %s', OUTPUT)
    # The same measurements as a chart (docs/_static/pictures/parity.svg).
    data = chart_data(rows)
    with open(pictures.PARITY_JSON, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write('\n')
    pictures.draw_parity(data)
    return 0


if __name__ == '__main__':
    sys.exit(main())
