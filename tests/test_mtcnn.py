"""MTCNN's R- and O-Net with their published weights (tests/mtcnn_files.py).

The weights are converted back from facenet's NumPy files; the nets must
load, match OpenCV's Caffe importer, and still tell a face from the rest:
on the astronaut photograph the face crop scores as a face, the sky and the
suit do not (a wrong transpose in the conversion fails this).
"""

import chainer_finetune  # noqa: F401  (before chainer)

import os

import chainer
import numpy
import pytest

from chainer_finetune import load_caffe
from detector_files import REPO, cache_dir, fetch_photos
from mtcnn_files import fetch_mtcnn

cv2 = pytest.importorskip('cv2')
pytestmark = pytest.mark.network

# (top, bottom, left, right) in the 512x512 astronaut photograph.
CROPS = {'face': (60, 190, 160, 290), 'sky': (380, 500, 380, 500),
         'suit': (300, 420, 150, 270)}


@pytest.fixture(scope='module')
def mtcnn():
    return fetch_mtcnn(cache_dir(), os.path.join(
        cache_dir() or os.path.join(REPO, '.cache', 'models'),
        'mtcnn_caffe'))


@pytest.fixture(scope='module')
def astronaut():
    bgr = cv2.imread(fetch_photos()['astronaut.png'])
    return bgr[:, :, ::-1].astype(numpy.float32)


def _crop(rgb, box, side):
    top, bottom, left, right = box
    patch = cv2.resize(rgb[top:bottom, left:right], (side, side),
                       interpolation=cv2.INTER_AREA)
    # MTCNN was trained in MATLAB: the nets see images transposed (W, H).
    return ((patch - 127.5) * 0.0078125).transpose(2, 1, 0)[None].copy()


@pytest.mark.parametrize('name,side', [('det2', 24), ('det3', 48)])
def test_mtcnn_tells_a_face_and_matches_opencv(mtcnn, astronaut, name,
                                               side):
    caffemodel, prototxt = mtcnn[name]
    net = load_caffe(caffemodel, prototxt)
    reference = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    face = {}
    for label, box in CROPS.items():
        x = _crop(astronaut, box, side)
        with chainer.using_config('train', False):
            prob, = net(inputs={'data': x}, outputs=['prob1'])
        reference.setInput(x)
        want = reference.forward('prob1').reshape(prob.shape)
        numpy.testing.assert_allclose(prob.array, want, atol=1e-6)
        face[label] = float(prob.array[0, 1])
    assert face['face'] > 0.99
    assert face['sky'] < 0.01 and face['suit'] < 0.01


def test_pnet_is_fully_convolutional(mtcnn):
    # P-Net slides over a whole image: 12x12 gives one window, 30x40 a map
    # (Caffe's pooling rounds up: 28 -> 14, 38 -> 19; then two 3x3 convs).
    caffemodel, prototxt = mtcnn['det1']
    net = load_caffe(caffemodel, prototxt)
    x = numpy.random.RandomState(0).uniform(-1, 1, (1, 3, 30, 40)).astype(
        numpy.float32)
    with chainer.using_config('train', False):
        prob, box = net(inputs={'data': x}, outputs=['prob1', 'conv4-2'])
    assert prob.shape == (1, 2, 10, 15) and box.shape == (1, 4, 10, 15)
    reference = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    reference.setInput(x)
    # float32 sums in another order: up to 2.4e-6 measured on this input.
    numpy.testing.assert_allclose(prob.array, reference.forward('prob1'),
                                  atol=1e-5)
    numpy.testing.assert_allclose(prob.array.sum(axis=1), 1, rtol=1e-6)
