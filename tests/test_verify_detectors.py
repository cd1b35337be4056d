"""``verify`` on SSD detectors: a DetectionOutput blob is compared as
detections.

Ours holds exactly the detections, grouped by image and label (Caffe's
layout); OpenCV's blob is ``(1, 1, keep_top_k, 7)``, sorted by score and
padded with zero rows. :func:`verify.compare_detections` pairs the rows;
``compare_with_opencv`` and ``chainer-finetune verify`` show the result as
one row with a verdict. Checked on crafted rows, on a generated SSD head
and (marked ``network``) on the two public detectors.
"""

import os

import chainer_finetune  # noqa: F401  (must precede `import chainer`)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from chainer_finetune import cli, load_caffe  # noqa: E402
from chainer_finetune.caffe import verify  # noqa: E402
from chainer_finetune.caffe.writer import NetWriter  # noqa: E402

try:
    import cv2
except ImportError:
    cv2 = None

needs_opencv = pytest.mark.skipif(cv2 is None, reason='needs OpenCV 4.x')


def rows(*values):
    return np.array(values, np.float32).reshape(-1, 7)


#: Caffe's order: by image, then label, then score.
OURS = rows([0, 1, 0.9, 0.1, 0.1, 0.4, 0.4],
            [0, 1, 0.6, 0.5, 0.5, 0.9, 0.8],
            [0, 3, 0.7, 0.2, 0.3, 0.6, 0.7],
            [1, 2, 0.8, 0.0, 0.1, 0.3, 0.2])


def opencv_layout(ours, keep_top_k=6):
    """OpenCV's blob of the same detections: by score, zero-padded."""
    ordered = ours[np.argsort(-ours[:, 2], kind='stable')]
    padded = np.zeros((keep_top_k, 7), np.float32)
    padded[:len(ordered)] = ordered
    return padded[None, None]


# --------------------------------------------------------------------------
# compare_detections on crafted rows
# --------------------------------------------------------------------------

def test_order_and_padding_do_not_matter():
    match = verify.compare_detections(OURS[None, None], opencv_layout(OURS))
    assert match.ok and match.matched == 4 and match.max_abs == 0
    assert len(match.ours) == len(match.theirs) == 4
    assert match.describe() == '4 of 4 detections matched (OpenCV: 4)'


def test_differences_within_the_tolerance_match():
    theirs = OURS.copy()
    theirs[:, 2:] += 4e-4
    match = verify.compare_detections(OURS, opencv_layout(theirs))
    assert match.ok and match.matched == 4
    assert match.max_abs == pytest.approx(4e-4, abs=1e-6)


@pytest.mark.parametrize('column, change', [
    (0, 1.0), (1, 1.0), (2, 2e-3), (3, -2e-3), (6, 5e-3)])
def test_a_changed_image_label_score_or_corner_is_reported(column, change):
    theirs = OURS.copy()
    theirs[2, column] += change
    match = verify.compare_detections(OURS, opencv_layout(theirs))
    assert not match.ok and match.matched == 3
    np.testing.assert_array_equal(match.unmatched_ours, OURS[2:3])
    np.testing.assert_array_equal(match.unmatched_theirs, theirs[2:3])
    assert 'unmatched: 1 of ours, 1 of OpenCV\'s' in match.describe()
    # A looser tolerance accepts the moved score or corner.
    if column >= 2:
        assert verify.compare_detections(OURS, opencv_layout(theirs),
                                         tolerance=1e-2).ok


def test_a_missing_detection_is_reported():
    match = verify.compare_detections(OURS, opencv_layout(OURS[:3]))
    assert not match.ok and match.matched == 3
    assert len(match.unmatched_ours) == 1 and not len(match.unmatched_theirs)


def test_placeholders_and_padding_are_not_detections():
    # Caffe's row for an image without detections, OpenCV's zero rows.
    nothing = rows([0, -1, -1, -1, -1, -1, -1])
    assert len(verify.detection_rows(nothing)) == 0
    match = verify.compare_detections(nothing, np.zeros((1, 1, 5, 7)))
    assert match.ok and match.matched == 0
    assert not verify.compare_detections(nothing, opencv_layout(OURS)).ok


def test_rows_at_the_keep_top_k_cut_may_differ():
    # keep_top_k (per image) 3 cut image 0's lists; its last kept score is
    # a near tie between two labels, which rounding may order either way.
    theirs = OURS.copy()
    theirs[1] = [0, 2, 0.6 + 1e-5, 0.5, 0.5, 0.9, 0.8]
    match = verify.compare_detections(OURS, opencv_layout(theirs),
                                      keep_top_k=3)
    assert match.ok and match.matched == 3 and match.at_cut == 2
    assert 'unpaired at the cut' in match.describe()
    # Without a cut (keep_top_k larger) the same difference fails.
    assert not verify.compare_detections(OURS, opencv_layout(theirs),
                                         keep_top_k=4).ok
    # A row well above the cut must still have its partner.
    theirs[0, 2] = 0.95
    assert not verify.compare_detections(OURS, opencv_layout(theirs),
                                         keep_top_k=3).ok


def test_rows_at_the_confidence_threshold_may_differ():
    extra = rows([1, 1, 0.5 + 2e-7, 0.1, 0.1, 0.2, 0.2])
    ours = np.concatenate([OURS, extra])
    assert verify.compare_detections(ours, opencv_layout(OURS),
                                     confidence_threshold=0.5).ok
    assert not verify.compare_detections(ours, opencv_layout(OURS),
                                         confidence_threshold=0.3).ok


def test_the_table_shows_one_row_with_the_verdict():
    good = verify.compare_detections(OURS, opencv_layout(OURS))
    bad = verify.compare_detections(OURS, opencv_layout(OURS[:3]))
    table = verify.format_comparison([
        verify.ComparisonRow('conv', 'conv', (1, 2), 1e-7, 1e-6),
        verify.ComparisonRow('det', 'det', (1, 1, 4, 7), good.max_abs, 0.0,
                             good),
        verify.ComparisonRow('det2', 'det2', (1, 1, 4, 7), bad.max_abs,
                             float('inf'), bad)], 1e-4).splitlines()
    assert table[2].split() == ['det', 'det', '1x1x4x7', '0', '-', '4', 'of',
                                '4', 'detections', 'matched', '(OpenCV:',
                                '4)']
    assert table[3].split()[5] == 'FAIL:' and 'unmatched' in table[3]
    # The worst rel_l2 is a blob's; the failed detections count.
    assert table[-1].endswith('worst rel_l2 1e-06 at conv (conv); 1 beyond '
                              'tolerance 0.0001')


# --------------------------------------------------------------------------
# A generated SSD head against OpenCV
# --------------------------------------------------------------------------

CLASSES = 3
DETECTION_PARAM = {
    'num_classes': CLASSES, 'share_location': True,
    'background_label_id': 0, 'code_type': 'CENTER_SIZE',
    'keep_top_k': 30, 'confidence_threshold': 0.2,
    'nms_param': {'nms_threshold': 0.45, 'top_k': 40}}


def ssd_head_writer(detection_param):
    """data (1, 4, 6, 6) -> loc and conf convolutions (2 priors per cell),
    Permute, Flatten, Softmax over classes, PriorBox and DetectionOutput:
    72 priors, many above the threshold."""
    rng = np.random.RandomState(0)
    w = NetWriter('ssd_head')
    w.input('data', (1, 4, 6, 6))
    for part, outputs, scale in (('loc', 2 * 4, 0.3), ('conf', 2 * CLASSES,
                                                       1.5)):
        w.layer(part, 'Convolution', 'data', part,
                params={'convolution_param': {'num_output': outputs,
                                              'kernel_size': 3, 'pad': 1}},
                blobs=[rng.normal(0, scale, (outputs, 4, 3, 3)),
                       rng.normal(0, scale, outputs)])
        w.layer(part + '_perm', 'Permute', part, part + '_perm',
                params={'permute_param': {'order': [0, 2, 3, 1]}})
        w.layer(part + '_flat', 'Flatten', part + '_perm', part + '_flat')
    w.layer('conf_reshape', 'Reshape', 'conf_flat', 'conf_reshape',
            params={'reshape_param': {'shape': {'dim': [0, -1, CLASSES]}}})
    w.layer('conf_softmax', 'Softmax', 'conf_reshape', 'conf_softmax',
            params={'softmax_param': {'axis': 2}})
    w.layer('conf_scores', 'Flatten', 'conf_softmax', 'conf_scores')
    w.layer('prior', 'PriorBox', ['loc', 'data'], 'prior',
            params={'prior_box_param': {
                'min_size': [2.0], 'aspect_ratio': [2.0], 'flip': False,
                'clip': True, 'variance': [0.1, 0.1, 0.2, 0.2]}})
    w.layer('detection_out', 'DetectionOutput',
            ['loc_flat', 'conf_scores', 'prior'], 'detection_out',
            params={'detection_output_param': detection_param})
    return w


def write(w, directory, name='net'):
    model = os.path.join(directory, name + '.caffemodel')
    prototxt = os.path.join(directory, name + '.prototxt')
    w.write_caffemodel(model)
    w.write_prototxt(prototxt)
    return model, prototxt


@needs_opencv
def test_generated_ssd_head_matches_opencv(tmp_path):
    model, prototxt = write(ssd_head_writer(DETECTION_PARAM), str(tmp_path))
    rows_ = verify.compare_with_opencv(model, prototxt, seed=1)
    assert all(r.compared for r in rows_), verify.format_comparison(rows_)
    det = rows_[-1]
    assert (det.layer, det.blob) == ('detection_out', 'detection_out')
    assert det.detections is not None and det.detections.ok, \
        verify.format_comparison(rows_)
    assert det.detections.matched == len(det.detections.theirs) >= 10
    assert det.shape == (1, 1, det.detections.matched, 7)
    assert det.rel_l2 == 0 and det.max_abs < 1e-5
    assert all(r.detections is None and r.rel_l2 < 1e-5 for r in rows_[:-1])
    assert '{0} of {0} detections matched'.format(
        det.detections.matched) in verify.format_comparison(rows_, 1e-4)


@needs_opencv
def test_different_detections_fail_verify(tmp_path, capsys):
    model, prototxt = write(ssd_head_writer(DETECTION_PARAM), str(tmp_path))
    # Our net keeps more boxes through NMS than OpenCV's reading of the
    # same caffemodel: only the detections can differ.
    looser = dict(DETECTION_PARAM, nms_param={'nms_threshold': 0.9,
                                              'top_k': 40})
    _, other = write(ssd_head_writer(looser), str(tmp_path), 'looser')
    rows_ = verify.compare_with_opencv(model, prototxt, seed=1,
                                       net=load_caffe(model, other))
    det = rows_[-1]
    assert not det.detections.ok and det.rel_l2 == float('inf')
    assert len(det.detections.unmatched_ours) > 0
    assert not len(det.detections.unmatched_theirs)
    assert all(r.rel_l2 < 1e-5 for r in rows_[:-1])
    table = verify.format_comparison(rows_, 1e-4).splitlines()
    assert table[-2].startswith('detection_out') and 'FAIL: ' in table[-2]
    assert table[-1].endswith('1 beyond tolerance 0.0001')
    # The command on the consistent files passes, the row says why.
    assert cli.main(['verify', model, '--prototxt', prototxt]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3].startswith('detection_out') and \
        out[-3].endswith('detections matched (OpenCV: {})'.format(
            len(det.detections.theirs)))


# --------------------------------------------------------------------------
# The public detectors (network: fetched once, as tests/test_detectors.py)
# --------------------------------------------------------------------------

@pytest.mark.network
@needs_opencv
@pytest.mark.parametrize('name', ['res10_ssd_face', 'mobilenet_ssd_voc'])
def test_real_detectors_on_photographs(name):
    from detector_files import (PHOTOS, fetch_detector, fetch_photos,
                                opencv_blob)
    files = fetch_detector(name)
    photos = fetch_photos()
    net = load_caffe(files.caffemodel, files.prototxt)
    found = 0
    for photo in PHOTOS:
        rows_ = verify.compare_with_opencv(
            files.caffemodel, files.prototxt,
            inputs={'data': opencv_blob(photos[photo], name)}, net=net)
        bad = [r for r in rows_ if not (r.compared and r.rel_l2 <= 1e-4)]
        assert not bad, verify.format_comparison(bad, 1e-4)
        det, = [r for r in rows_ if r.detections is not None]
        assert det.detections.matched == len(det.detections.theirs)
        found += det.detections.matched
    assert found >= len(PHOTOS) if name == 'mobilenet_ssd_voc' else found


@pytest.mark.network
@needs_opencv
@pytest.mark.parametrize('name', ['res10_ssd_face', 'mobilenet_ssd_voc'])
def test_cli_verify_passes_on_a_known_detector(name, capsys, monkeypatch):
    from detector_files import fetch_detector
    files = fetch_detector(name)
    # The command fetches into $CHAINER_FINETUNE_CACHE/models: the entry
    # just verified.
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', os.path.dirname(
        os.path.dirname(os.path.dirname(files.caffemodel))))
    assert cli.main(['verify', name]) == 0
    out = capsys.readouterr().out
    det_row, = [line for line in out.splitlines()
                if line.startswith('detection_out')]
    assert 'detections matched' in det_row and 'FAIL' not in det_row
    assert out.splitlines()[-1] == 'OK (0 blobs beyond tolerance 0.0001)'
