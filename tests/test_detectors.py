"""The two public SSD detectors, ours against OpenCV, on four photographs.

Every intermediate blob within rel-L2 1e-4 of OpenCV's (same input blob:
OpenCV's ``blobFromImage``), and the same detections: same labels, scores
and box corners (fractions of the image) within 1e-3. Also
``chainer-finetune detect`` on each known detector by name.

Needs the SSD layers (Normalize, Permute, PriorBox, DetectionOutput): the
module is skipped while the layer registry has no ``DetectionOutput``.
Marked ``network`` (fetches as tests/test_detector_models.py does).
"""

import os

import chainer_finetune  # noqa: F401  (must precede `import chainer`)

import pytest  # noqa: E402

from chainer_finetune import cli, detect, hub, load_caffe  # noqa: E402
from chainer_finetune.caffe import supported_types, verify  # noqa: E402
from chainer_finetune.data import read_image  # noqa: E402

from detector_files import (DETECTORS, PHOTOS, fetch_detector,  # noqa: E402
                            fetch_photos, opencv_blob)

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif('DetectionOutput' not in supported_types(),
                       reason='the SSD layers (DetectionOutput) are not '
                              'in the layer registry yet'),
]

#: Relative L2 error allowed per blob against OpenCV.
BLOB_TOLERANCE = 1e-4
#: Scores and corners (fractions of the image) allowed to differ by this.
DETECTION_TOLERANCE = 1e-3


@pytest.fixture(scope='module', params=DETECTORS)
def detector(request):
    pytest.importorskip('cv2')
    files = fetch_detector(request.param)
    return request.param, files, load_caffe(files.caffemodel,
                                            files.prototxt)


def test_every_blob_and_the_detections_match_opencv(detector):
    name, files, net = detector
    photos = fetch_photos()
    for photo in PHOTOS:
        blob = opencv_blob(photos[photo], name)
        rows = verify.compare_with_opencv(
            files.caffemodel, files.prototxt, inputs={'data': blob},
            net=net, detection_tolerance=DETECTION_TOLERANCE)
        # The detection rows are compared as detections (OpenCV pads them
        # with zeros to keep_top_k): same image and label, score and
        # corners within the tolerance.
        detections = [r.detections for r in rows if r.detections]
        compared = [r for r in rows if r.compared and not r.detections]
        assert len(compared) > 20, (photo, len(compared))
        bad = [(r.layer, r.blob, r.rel_l2) for r in compared
               if not r.rel_l2 <= BLOB_TOLERANCE]
        assert not bad, '{} {}: {}'.format(name, photo, bad)
        match, = detections
        assert match.ok and len(match.ours), '{} {}: {}'.format(
            name, photo, match.describe())
        assert match.max_abs <= DETECTION_TOLERANCE


def test_detect_helper_finds_the_reference_objects(detector):
    name, _, net = detector
    model = hub.MODELS[name]
    photos = fetch_photos()
    images = [read_image(photos[p]) for p in PHOTOS]
    found = dict(zip(PHOTOS, detect.detect(
        net, images, size=model.input_size, mean=model.mean_bgr,
        scale=model.input_scale or 1.0, threshold=0.3)))
    if name == 'res10_ssd_face':
        assert found['astronaut.png'].labels.tolist()[:1] == [1]
        assert found['astronaut.png'].scores[0] > 0.99
    else:
        assert {p: set(f.labels.tolist()) for p, f in found.items()} == {
            'astronaut.png': {15}, 'chelsea.png': {8}, 'horse.png': {13},
            'motorcycle_left.png': {14, 2}}


def test_cli_detect_by_known_name(detector, tmp_path, capsys, monkeypatch):
    name, files, _ = detector
    # The command fetches into $CHAINER_FINETUNE_CACHE/models: the entry
    # the fixture verified.
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', os.path.dirname(
        os.path.dirname(os.path.dirname(files.caffemodel))))
    photos = fetch_photos()
    paths = [photos[p] for p in PHOTOS]
    out = str(tmp_path / 'pictures')
    assert cli.main(['detect', '--caffemodel', name, '--out', out] +
                    paths) == 0
    lines = capsys.readouterr().out.splitlines()
    labels = {line.split('\t')[1] for line in lines}
    assert ('face (1)' in labels) if name == 'res10_ssd_face' else \
        {'person (15)', 'cat (8)', 'horse (13)',
         'motorbike (14)'} <= labels
    assert sorted(os.listdir(out)) == sorted(PHOTOS)
