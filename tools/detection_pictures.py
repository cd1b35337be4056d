#!/usr/bin/env python3
"""Regenerate the pictures and the output shown in docs/detection.rst.

Usage (from anywhere; paths are resolved relative to this repository)::

    python tools/detection_pictures.py

For each known detector (``res10_ssd_face``, ``mobilenet_ssd_voc``) this
runs the real command, as a user would, from the directory holding the
four scikit-image photographs (data set ``photos``), with the threshold
of ``THRESHOLDS``::

    chainer-finetune detect --caffemodel NAME --threshold T \\
        astronaut.png chelsea.png horse.png motorcycle_left.png

then the same detector through the Python helper
(:func:`chainer_finetune.detect.detect`), checking that it finds exactly
what the command printed, and writes into ``docs/_static/detection/``:

* ``NAME.txt``: the command line and the lines it printed;
* ``NAME_PHOTO.png``: the photograph with the detections drawn by
  :func:`chainer_finetune.detect.draw_detections` (as ``--out`` draws
  them), the photograph shrunk first (256 palette colours, then smaller
  sizes) until the file is at most ``--max-bytes``, so the captions keep
  their size.

The models and photographs are fetched into ``$CHAINER_FINETUNE_CACHE/models``
when that variable is set, else into the repository's ``.cache/models``
(the tests' cache); the first run needs PyPI, later ones do not.
"""

import argparse
import io
import logging
import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# After the path is set, so this checkout's package is the one run.
from chainer_finetune import detect, hub, load_caffe  # noqa: E402
from chainer_finetune.data import read_image  # noqa: E402

logger = logging.getLogger('detection_pictures')

PHOTOS = ('astronaut.png', 'chelsea.png', 'horse.png', 'motorcycle_left.png')
OUTPUT_DIR = os.path.join(ROOT, 'docs', '_static', 'detection')
#: ``--threshold`` per detector: the command's default 0.5 for the face
#: detector (below it, it sees faces in the cat); for MobileNet-SSD the
#: tests' 0.3 (tests/test_detector_models.py), which keeps the bicycle
#: (0.42) beside the motorbike.
THRESHOLDS = {'res10_ssd_face': 0.5, 'mobilenet_ssd_voc': 0.3}
#: Each picture's size limit, so the repository and the pages stay light.
DEFAULT_MAX_BYTES = 100_000
#: Each shrinking step scales the picture by this factor.
SHRINK_STEP = 0.85


def cache_root() -> str:
    """The directory whose ``models/`` holds the fetched files."""
    return os.environ.get('CHAINER_FINETUNE_CACHE') or \
        os.path.join(ROOT, '.cache')


def run_detect(name: str, photo_dir: str) -> List[str]:
    """Runs ``chainer-finetune detect`` on the photos; its printed lines."""
    command = [sys.executable, '-m', 'chainer_finetune', 'detect',
               '--caffemodel', name, '--threshold', str(THRESHOLDS[name]),
               *PHOTOS]
    env = dict(os.environ, CHAINER_FINETUNE_CACHE=cache_root(),
               PYTHONPATH=os.pathsep.join(
                   [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    done = subprocess.run(command, cwd=photo_dir, env=env, check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)
    if done.returncode != 0:
        raise RuntimeError('{} failed ({}):\n{}'.format(
            ' '.join(command), done.returncode, done.stderr))
    return done.stdout.splitlines()


def run_helper(name: str, images: Sequence[numpy.ndarray]
               ) -> List[detect.Detections]:
    """The same run through the Python helper, for the pictures."""
    caffemodel, prototxt, known = hub.locate_model(
        name, cache_dir=os.path.join(cache_root(), 'models'))
    net = load_caffe(caffemodel, prototxt)
    return detect.detect(net, images, size=known.input_size,
                         mean=known.mean_bgr,
                         scale=known.input_scale or 1.0,
                         threshold=THRESHOLDS[name])


def png_bytes(picture) -> bytes:
    """The picture as an optimised PNG file."""
    buffer = io.BytesIO()
    picture.save(buffer, format='PNG', optimize=True)
    return buffer.getvalue()


def scaled(found: detect.Detections, x_factor: float, y_factor: float
           ) -> detect.Detections:
    """The detections in pixels of the image resized by these factors."""
    factors = numpy.array([x_factor, y_factor] * 2, numpy.float32)
    return found._replace(boxes=found.boxes * factors)


def picture_png(image: numpy.ndarray, found: detect.Detections,
                label_names: Optional[Sequence[str]], max_bytes: int
                ) -> bytes:
    """The image with its detections drawn, a PNG of at most ``max_bytes``.

    The photograph is shrunk (each step by :data:`SHRINK_STEP`, 256
    palette colours once the full-colour file is too large) before the
    boxes are drawn, so the captions keep the command's font size.
    """
    from PIL import Image
    photo = Image.fromarray(numpy.asarray(image, numpy.uint8)).convert('RGB')
    width, height = photo.size
    data = png_bytes(detect.draw_detections(photo, found, label_names))
    factor = 1.0
    while len(data) > max_bytes:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        small = photo.resize(size, Image.LANCZOS)
        drawn = detect.draw_detections(
            numpy.asarray(small),
            scaled(found, size[0] / width, size[1] / height), label_names)
        data = png_bytes(drawn.quantize(256, method=Image.MEDIANCUT,
                                        dither=Image.FLOYDSTEINBERG))
        logger.debug('%dx%d: %d bytes', size[0], size[1], len(data))
        factor *= SHRINK_STEP
    return data


def transcript(name: str, lines: List[str]) -> str:
    """The command line as typed and what it printed."""
    command = ('$ chainer-finetune detect --caffemodel {} --threshold {} \\\n'
               '      {}'.format(name, THRESHOLDS[name], ' '.join(PHOTOS)))
    return '\n'.join([command] + lines) + '\n'


def helper_lines(found: Sequence[detect.Detections],
                 label_names: Optional[Sequence[str]]) -> List[str]:
    """What the command prints for these detections of the photos."""
    return [detect.format_detection(photo, *row, label_names=label_names)
            for photo, detections in zip(PHOTOS, found)
            for row in zip(*detections)]


def write_detector(name: str, photos: Dict[str, str], max_bytes: int,
                   out_dir: str) -> None:
    """Runs one detector and writes its transcript and pictures."""
    lines = run_detect(name, os.path.dirname(photos[PHOTOS[0]]))
    images = [read_image(photos[photo]) for photo in PHOTOS]
    found = run_helper(name, images)
    label_names = hub.MODELS[name].label_names
    if helper_lines(found, label_names) != lines:
        raise RuntimeError('{}: the helper found {}, the command printed {}'
                           .format(name, helper_lines(found, label_names),
                                   lines))
    for photo, image, detections in zip(PHOTOS, images, found):
        data = picture_png(image, detections, label_names, max_bytes)
        target = os.path.join(out_dir, '{}_{}.png'.format(
            name, os.path.splitext(photo)[0]))
        with open(target, 'wb') as f:
            f.write(data)
        logger.info('wrote %s (%d bytes)', target, len(data))
    with open(os.path.join(out_dir, name + '.txt'), 'w',
              encoding='utf-8') as f:
        f.write(transcript(name, lines))
    for line in lines:
        logger.info('%s: %s', name, line)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--max-bytes', type=int, default=DEFAULT_MAX_BYTES,
                        help='largest PNG file (default %(default)s)')
    parser.add_argument('--out', default=OUTPUT_DIR,
                        help='output directory (default docs/_static/'
                             'detection)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    photos = hub.fetch_dataset('photos', os.path.join(cache_root(), 'models'))
    os.makedirs(args.out, exist_ok=True)
    for name in THRESHOLDS:
        write_detector(name, photos, args.max_bytes, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
