"""Export to Caffe (``chainer_finetune.export``), read back by load_caffe and
by OpenCV's ``readNetFromCaffe`` (the independent reader).

Tolerances: load_caffe runs the same Chainer functions on the same float32
weights, so its output must equal the model's within 1e-6 (max abs);
OpenCV computes on its own, within a relative L2 error of 1e-5.

The tests named ``test_chainer_exporter_*`` cover the defects of Chainer's
own exporter (``chainer.exporters.caffe``): each runs it on the same model
and shows it failing the check that ours passes.
"""

import logging
import os

import chainer_finetune  # noqa: F401  (before chainer)

import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402
import numpy  # noqa: E402
import pytest  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from chainer_finetune import CaffeNet  # noqa: E402
from chainer_finetune import load_caffe  # noqa: E402
from chainer_finetune import replace_head  # noqa: E402
from chainer_finetune.caffe import caffe_pb2  # noqa: E402
from chainer_finetune.caffe import verify  # noqa: E402
from chainer_finetune.errors import ExportError  # noqa: E402
from chainer_finetune.export import export_caffe  # noqa: E402
from chainer_finetune.finetune.model import CaffeClassifier  # noqa: E402

from test_open_nsfw import network, nsfw_files  # noqa: E402,F401

cv2 = pytest.importorskip('cv2')

LOAD_TOLERANCE = 1e-6      # max abs, load_caffe
OPENCV_TOLERANCE = 1e-5    # relative L2, OpenCV


def _layers(prototxt):
    net = caffe_pb2.NetParameter()
    with open(prototxt) as f:
        text_format.Parse(f.read(), net)
    return list(net.layer)


@pytest.fixture(autouse=True)
def plain_functions(monkeypatch):
    # The files against the models, with the same Chainer functions on both
    # sides; the fast inference path's own rounding (rel-L2 <= 1e-6 of
    # these) is tests/test_fast_path.py's subject.
    monkeypatch.setattr(CaffeNet, 'fast_path', False)


def _chainer(model, x):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return model(x).array


def _load_caffe_output(files, blob, inputs):
    net = load_caffe(files.caffemodel, files.prototxt)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        y, = net(inputs=inputs, outputs=[blob])
    return y.array


def _opencv_output(files, layer, inputs):
    return verify.opencv_outputs(files.caffemodel, files.prototxt, inputs,
                                 [layer])[layer][0]


def _check_both(files, blob, inputs, expected):
    """load_caffe and OpenCV outputs of ``blob`` against ``expected``."""
    ours = _load_caffe_output(files, blob, inputs)
    assert ours.shape == expected.shape
    max_abs, _ = verify.compare_arrays(ours, expected)
    assert max_abs <= LOAD_TOLERANCE, max_abs
    theirs = _opencv_output(files, blob, inputs)
    assert theirs.size == expected.size, (theirs.shape, expected.shape)
    _, rel = verify.compare_arrays(theirs.reshape(expected.shape), expected)
    assert rel <= OPENCV_TOLERANCE, rel
    return max_abs, rel


def _perturb(link, seed, scale=0.05):
    """Changes every parameter and BatchNorm statistic a little (what
    fine-tuning does), so a test cannot pass on the file's old values."""
    rs = numpy.random.RandomState(seed)
    for _, param in sorted(link.namedparams()):
        param.array *= 1 + scale * rs.standard_normal(param.shape).astype(
            numpy.float32)
    for _, sub in sorted(link.namedlinks()):
        if isinstance(sub, L.BatchNormalization):
            sub.avg_mean += scale * rs.standard_normal(sub.avg_mean.shape)
            sub.avg_var *= 1 + scale * rs.uniform(0, 1, sub.avg_var.shape)


# --------------------------------------------------------------------------
# (a) CaffeNet: open_nsfw with a replaced head, fine-tuned weights, cut
# --------------------------------------------------------------------------

@network
def test_open_nsfw_replaced_head_round_trip(nsfw_files, tmp_path):
    net = load_caffe(nsfw_files.caffemodel, nsfw_files.prototxt)
    replace_head(net, 'fc_nsfw', 3, seed=0)
    _perturb(net, seed=1)
    files = export_caffe(net, tmp_path / 'nsfw3')
    assert (files.prototxt, files.caffemodel) == (
        str(tmp_path / 'nsfw3.prototxt'), str(tmp_path / 'nsfw3.caffemodel'))
    layers = {layer.name: layer for layer in _layers(files.prototxt)}
    assert layers['fc_nsfw'].inner_product_param.num_output == 3
    assert list(layers['data'].input_param.shape[0].dim) == [1, 3, 224, 224]
    assert all(layer.batch_norm_param.use_global_stats
               for layer in layers.values() if layer.type == 'BatchNorm')
    x = numpy.random.RandomState(2).uniform(
        -120, 120, (2, 3, 224, 224)).astype(numpy.float32)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        expected, = net(inputs={'data': x}, outputs=['prob'])
    assert expected.shape == (2, 3)
    _check_both(files, 'prob', {'data': x}, expected.array)


@network
def test_open_nsfw_cut_and_training_net(nsfw_files, tmp_path):
    """stop_at keeps only the layers needed; the caffemodel's own training
    net (no prototxt: MemoryData, SoftmaxWithLoss) needs an input shape and
    loses its loss layer."""
    cut = load_caffe(nsfw_files.caffemodel, nsfw_files.prototxt,
                     stop_at='eltwise_stage1_block0')
    files = export_caffe(cut, tmp_path / 'cut')
    names = [layer.name for layer in _layers(files.prototxt)]
    assert names[-1] == 'eltwise_stage1_block0'
    assert len(names) == len(cut.layers) == 63   # of 229
    x = numpy.random.RandomState(3).uniform(
        -120, 120, (1, 3, 64, 64)).astype(numpy.float32)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        expected, = cut(inputs={'data': x}, outputs=['eltwise_stage1_block0'])
    _check_both(files, 'eltwise_stage1_block0', {'data': x}, expected.array)

    train = load_caffe(nsfw_files.caffemodel)
    with pytest.raises(ExportError, match="shape of the net's inputs"):
        export_caffe(train, tmp_path / 'train')
    files = export_caffe(train, tmp_path / 'train',
                         input_shape=(5, 3, 224, 224))
    layers = _layers(files.prototxt)
    assert 'SoftmaxWithLoss' not in {layer.type for layer in layers}
    assert [layer.top[0] for layer in layers if layer.type == 'Input'] == [
        'data']
    assert list(layers[0].input_param.shape[0].dim) == [1, 3, 224, 224]


# --------------------------------------------------------------------------
# (b) the finetune job's classifier: backbone + new head
# --------------------------------------------------------------------------

@network
def test_classifier_with_new_head_round_trip(nsfw_files, tmp_path):
    backbone = load_caffe(nsfw_files.caffemodel, nsfw_files.prototxt,
                          stop_at='eltwise_stage1_block1')
    model = CaffeClassifier(backbone, 'data', 'eltwise_stage1_block1',
                            n_class=4)
    x = numpy.random.RandomState(4).uniform(
        -120, 120, (3, 3, 96, 96)).astype(numpy.float32)
    _chainer(model, x[:1])   # the head's Linear takes its input size
    _perturb(model, seed=5)
    model.head_norm.avg_var += 1.0   # away from the fresh 1s and 0s
    model.head_norm.avg_mean += 0.5
    files = export_caffe(model, tmp_path / 'clf', input_shape=(1, 3, 96, 96))
    layers = _layers(files.prototxt)
    assert [(layer.name, layer.type) for layer in layers[-4:]] == [
        ('head_pool', 'Pooling'), ('head_norm', 'BatchNorm'),
        ('head_norm/scale', 'Scale'), ('head', 'InnerProduct')]
    expected = _chainer(model, x)
    assert expected.shape == (3, 4)
    _check_both(files, 'head', {'data': x}, expected)


@network
def test_classifier_with_replaced_layer_round_trip(nsfw_files, tmp_path):
    backbone = load_caffe(nsfw_files.caffemodel, nsfw_files.prototxt)
    replace_head(backbone, 'fc_nsfw', 5, seed=0)
    _perturb(backbone['fc_nsfw'], seed=6, scale=0.5)
    model = CaffeClassifier(backbone, 'data', 'fc_nsfw',
                            replaced_layer='fc_nsfw')
    files = export_caffe(model, tmp_path / 'clf')
    names = [layer.name for layer in _layers(files.prototxt)]
    assert names[-1] == 'fc_nsfw' and 'prob' not in names
    x = numpy.random.RandomState(8).uniform(
        -120, 120, (1, 3, 224, 224)).astype(numpy.float32)
    _check_both(files, 'fc_nsfw', {'data': x}, _chainer(model, x))


# --------------------------------------------------------------------------
# (c) a traced Chain: the AlexNet example's
# --------------------------------------------------------------------------

@pytest.fixture(scope='module')
def alexnet():
    """The example's AlexNet (10 classes) with bvlc_alexnet-shaped
    generated weights (``zoo_shapes.alexnet_writer``, LRN k=1)."""
    from test_example_alexnet import example
    from chainer_finetune.caffe.zoo_shapes import alexnet_writer
    writer = alexnet_writer(n_class=10, seed=11)
    model = example.AlexNet(10)
    for name, link in model.namedlinks(skipself=True):
        W, b = writer.blob_arrays(name[1:])
        # conv1 scaled down as the example's generated model is, so that
        # fc8's scores stay in the tens.
        link.W.array[...] = W / (500.0 if name == '/conv1' else 1.0)
        link.b.array[...] = b
    return model


def test_alexnet_example_traced_round_trip(alexnet, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        files = export_caffe(alexnet, tmp_path / 'alexnet',
                             input_shape=(2, 3, 227, 227))
    assert 'LRN' not in caplog.text   # k = 1: nothing for OpenCV to differ
    layers = _layers(files.prototxt)
    assert [layer.name for layer in layers] == [
        'data', 'conv1', 'conv1/relu', 'conv1/lrn', 'conv1/pool',
        'conv2', 'conv2/relu', 'conv2/lrn', 'conv2/pool',
        'conv3', 'conv3/relu', 'conv4', 'conv4/relu', 'conv5', 'conv5/relu',
        'conv5/pool', 'fc6', 'fc6/relu', 'fc7', 'fc7/relu', 'fc8']
    by_name = {layer.name: layer for layer in layers}
    assert by_name['conv2'].convolution_param.group == 2
    assert by_name['conv1/lrn'].lrn_param.alpha == pytest.approx(1e-4)
    assert by_name['conv1/lrn'].lrn_param.k == 1
    assert list(by_name['data'].input_param.shape[0].dim) == [1, 3, 227, 227]
    rs = numpy.random.RandomState(12)
    for batch in (1, 3):
        x = rs.uniform(-100, 100, (batch, 3, 227, 227)).astype(numpy.float32)
        expected = _chainer(alexnet, x)
        assert expected.shape == (batch, 10)
        assert numpy.abs(expected).max() > 1   # scores, not all near 0
        _check_both(files, 'fc8', {'data': x}, expected)


# --------------------------------------------------------------------------
# Chainer's exporter: each defect, against ours
# --------------------------------------------------------------------------

def _chainer_export(model, x, directory):
    """chainer.exporters.caffe.export's files, as a files-like pair."""
    from chainer.exporters import caffe as chainer_caffe
    os.makedirs(directory)
    with chainer.using_config('train', False):
        chainer_caffe.export(model, [chainer.Variable(x)], str(directory),
                             graph_name='net')

    class Files:
        prototxt = os.path.join(directory, 'chainer_model.prototxt')
        caffemodel = os.path.join(directory, 'chainer_model.caffemodel')
    return Files


class _Conv(chainer.Chain):
    def __init__(self, ksize, **kwargs):
        super().__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(2, 3, ksize, **kwargs)
            self.fc = L.Linear(None, 4)

    def forward(self, x):
        return self.fc(F.relu(self.conv1(x)))


def test_chainer_exporter_non_square_kernel(tmp_path, seeded):
    """Chainer's exporter writes kernel_h=5, kernel_w=3 for a 3x5 kernel
    (and the file then fails to run); ours writes 3 and 5."""
    model = _Conv((3, 5), stride=(1, 2), pad=(1, 0))
    x = seeded.uniform(-1, 1, (2, 2, 12, 14)).astype(numpy.float32)
    expected = _chainer(model, x)
    ours = export_caffe(model, tmp_path / 'ours', input_shape=x.shape)
    p = _layers(ours.prototxt)[1].convolution_param
    assert (p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h,
            p.pad_w) == (3, 5, 1, 2, 1, 0)
    _check_both(ours, 'fc', {'data': x}, expected)
    theirs = _chainer_export(model, x, tmp_path / 'chainer')
    p = _layers(theirs.prototxt)[1].convolution_param
    assert (p.kernel_h, p.kernel_w) == (5, 3)   # swapped
    with pytest.raises(Exception):
        _check_both(theirs, 'LinearFunction-3-1', {'data': x}, expected)


class _Pool(chainer.Chain):
    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        return self.pool(x)


POOLINGS = {
    'max_floor': lambda x: F.max_pooling_2d(x, 3, 2, cover_all=False),
    'max_cover_all': lambda x: F.max_pooling_2d(x, 3, 2, cover_all=True),
    'average': lambda x: F.average_pooling_2d(x, 3, 2),
}


@pytest.mark.parametrize('kind, size, chainer_right', [
    ('max_floor', 4, False), ('max_cover_all', 5, True),
    ('average', 4, False)])
def test_chainer_exporter_pooling_rounding(tmp_path, seeded, kind, size,
                                           chainer_right):
    """10x10, kernel 3, stride 2: Chainer gives 4x4 (cover_all=False,
    average pooling) or 5x5 (cover_all=True). Chainer's exporter writes no
    rounding, so Caffe and OpenCV give 5x5 in all three; ours gives
    Chainer's size (slicing off the row and column no window reads)."""
    model = _Pool(POOLINGS[kind])
    x = seeded.uniform(-1, 1, (2, 3, 10, 10)).astype(numpy.float32)
    expected = _chainer(model, x)
    assert expected.shape == (2, 3, size, size)
    ours = export_caffe(model, tmp_path / 'ours', input_shape=x.shape)
    pool = [layer for layer in _layers(ours.prototxt)
            if layer.type == 'Pooling']
    assert len(pool) == 1
    _check_both(ours, pool[0].name, {'data': x}, expected)
    theirs = _chainer_export(model, x, tmp_path / 'chainer')
    layer = _layers(theirs.prototxt)[-1].name
    shape = _opencv_output(theirs, layer, {'data': x}).shape
    assert (shape == expected.shape) is chainer_right, shape


def test_pooling_with_padding_rounded_down_writes_round_mode(tmp_path,
                                                             seeded, caplog):
    """With padding, slicing cannot make Caffe round down: round_mode FLOOR
    (BVLC Caffe reads it; OpenCV does not, hence the warning)."""
    model = _Pool(lambda x: F.max_pooling_2d(x, 3, 2, pad=1,
                                             cover_all=False))
    x = seeded.uniform(-1, 1, (1, 2, 10, 10)).astype(numpy.float32)
    expected = _chainer(model, x)
    assert expected.shape == (1, 2, 5, 5)   # Caffe's default gives 6x6
    with caplog.at_level(logging.WARNING):
        files = export_caffe(model, tmp_path / 'pad', input_shape=x.shape)
    assert 'round_mode FLOOR' in caplog.text
    pool = _layers(files.prototxt)[-1]
    assert pool.pooling_param.round_mode == \
        caffe_pb2.PoolingParameter.FLOOR
    numpy.testing.assert_array_equal(
        _load_caffe_output(files, pool.name, {'data': x}), expected)


def test_chainer_exporter_layer_names(tmp_path, seeded):
    model = _Conv(3)
    x = seeded.uniform(-1, 1, (1, 2, 8, 8)).astype(numpy.float32)
    ours = export_caffe(model, tmp_path / 'ours', input_shape=x.shape)
    assert [layer.name for layer in _layers(ours.prototxt)] == [
        'data', 'conv1', 'conv1/relu', 'fc']
    theirs = _chainer_export(model, x, tmp_path / 'chainer')
    assert [layer.name for layer in _layers(theirs.prototxt)] == [
        'data', 'Convolution2DFunction-0-1', 'ReLU-1-1', 'Reshape-2-1',
        'LinearFunction-3-1']


def test_chainer_exporter_batch(tmp_path, seeded):
    """Traced at batch 2, Chainer's file bakes 2 into a Reshape and fails at
    batches 1 and 3; ours has no Reshape (InnerProduct flattens) and
    declares batch 1."""
    model = _Conv(3)
    x2 = seeded.uniform(-1, 1, (2, 2, 12, 14)).astype(numpy.float32)
    ours = export_caffe(model, tmp_path / 'ours', input_shape=x2.shape)
    theirs = _chainer_export(model, x2, tmp_path / 'chainer')
    for batch in (1, 2, 3):
        x = seeded.uniform(-1, 1, (batch, 2, 12, 14)).astype(numpy.float32)
        expected = _chainer(model, x)
        _check_both(ours, 'fc', {'data': x}, expected)
        if batch != 2:
            with pytest.raises(Exception):
                _check_both(theirs, 'LinearFunction-3-1', {'data': x},
                            expected)


class _Branches(chainer.Chain):
    """Concat, Add, BatchNormalization, F.mean, Softmax, dilation, groups."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.a = L.Convolution2D(4, 6, 3, pad=2, dilate=2, groups=2)
            self.b = L.Convolution2D(4, 6, 1)
            self.bn = L.BatchNormalization(12)
            self.fc = L.Linear(12, 3)

    def forward(self, x):
        h = F.concat([self.a(x), self.b(x) * 2.0])
        h = F.leaky_relu(self.bn(h + h + 0.5))
        return F.softmax(self.fc(F.mean(h, axis=(2, 3))))


def test_more_kinds_of_links_and_functions(tmp_path, seeded):
    model = _Branches()
    _perturb(model, seed=9, scale=0.3)
    x = seeded.uniform(-1, 1, (3, 4, 9, 7)).astype(numpy.float32)
    files = export_caffe(model, tmp_path / 'branches',
                         input_shape=(1, 4, 9, 7))
    layers = _layers(files.prototxt)
    assert layers[1].convolution_param.dilation == [2]
    assert layers[1].convolution_param.group == 2
    _check_both(files, layers[-1].name, {'data': x}, _chainer(model, x))


# --------------------------------------------------------------------------
# Errors and warnings
# --------------------------------------------------------------------------

class _Sin(_Conv):
    def forward(self, x):
        return self.fc(F.sin(F.relu(self.conv1(x))))


def test_unsupported_function_is_named_with_its_place(tmp_path):
    with pytest.raises(ExportError) as e:
        export_caffe(_Sin(3), tmp_path / 'sin', input_shape=(1, 2, 8, 8))
    assert str(e.value) == (
        'cannot export Sin at node 3 of 5 (after conv1, input of fc) to '
        'Caffe: Caffe has no layer for it')
    assert not os.listdir(tmp_path)


def test_reshape_of_the_batch_axis_is_refused(tmp_path):
    model = _Pool(lambda x: F.reshape(x, (-1,)))
    with pytest.raises(ExportError,
                       match=r'Reshape at node 1 of 1 \(after data\).*batch'):
        export_caffe(model, tmp_path / 'r', input_shape=(2, 3, 4, 4))


def test_lrn_with_k_other_than_1_warns(tmp_path, caplog):
    model = _Pool(lambda x: F.local_response_normalization(x, n=3, k=2))
    with caplog.at_level(logging.WARNING):
        files = export_caffe(model, tmp_path / 'lrn',
                             input_shape=(1, 6, 4, 4))
    assert "layer 'data/lrn': LRN with k=2" in caplog.text
    x = numpy.random.RandomState(0).uniform(
        -3, 3, (2, 6, 4, 4)).astype(numpy.float32)
    numpy.testing.assert_allclose(
        _load_caffe_output(files, 'data/lrn', {'data': x}),
        _chainer(model, x), rtol=1e-6)


def test_existing_output_is_not_overwritten(tmp_path, seeded):
    model = _Conv(3)
    (tmp_path / 'net.caffemodel').write_bytes(b'mine')
    with pytest.raises(FileExistsError, match='net.caffemodel'):
        export_caffe(model, tmp_path / 'net', input_shape=(1, 2, 8, 8))
    assert (tmp_path / 'net.caffemodel').read_bytes() == b'mine'
    assert not (tmp_path / 'net.prototxt').exists()
    files = export_caffe(model, tmp_path / 'net', input_shape=(1, 2, 8, 8),
                         overwrite=True)
    x = seeded.uniform(-1, 1, (1, 2, 8, 8)).astype(numpy.float32)
    _check_both(files, 'fc', {'data': x}, _chainer(model, x))


def test_chain_needs_an_input_shape(tmp_path):
    with pytest.raises(ExportError, match='give its input_shape'):
        export_caffe(_Conv(3), tmp_path / 'x')


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------

@pytest.fixture
def tiny_caffe(tmp_path):
    """A small Caffe net (conv, relu, pool, fc, prob), V2 files."""
    from chainer_finetune.caffe.writer import NetWriter
    rs = numpy.random.RandomState(0)
    w = NetWriter('tiny')
    w.input('data', (1, 3, 10, 10))
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[rs.standard_normal((4, 3, 3, 3)), rs.standard_normal(4)])
    w.layer('relu1', 'ReLU', 'conv1', 'conv1')
    w.layer('pool1', 'Pooling', 'conv1', 'pool1',
            params={'pooling_param': {'pool': 'MAX', 'kernel_size': 3,
                                      'stride': 2}})
    w.layer('fc', 'InnerProduct', 'pool1', 'fc',
            params={'inner_product_param': {'num_output': 2}},
            blobs=[rs.standard_normal((2, 64)), rs.standard_normal(2)])
    w.layer('prob', 'Softmax', 'fc', 'prob')
    w.write_caffemodel(tmp_path / 'tiny.caffemodel')
    w.write_prototxt(tmp_path / 'tiny.prototxt')
    return tmp_path / 'tiny.caffemodel', tmp_path / 'tiny.prototxt'


def test_cli_export_caffe(tiny_caffe, tmp_path, capsys):
    from chainer_finetune.cli import main
    model, prototxt = tiny_caffe
    out = tmp_path / 'out' / 'deploy'
    out.parent.mkdir()
    argv = ['export', '--format', 'caffe', '--caffemodel', str(model),
            '--prototxt', str(prototxt), '--stop-at', 'pool1', '-o',
            str(out)]
    assert main(argv) == 0
    assert 'deploy.prototxt' in capsys.readouterr().out
    assert [layer.name for layer in _layers(str(out) + '.prototxt')] == [
        'data', 'conv1', 'relu1', 'pool1']
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and '--overwrite' in err
    assert main(argv + ['--overwrite']) == 0
    # The same source as ONNX: OUT.onnx beside the Caffe files, which the
    # --overwrite check for --format onnx does not look at.
    onnx_argv = ['export', '--format', 'onnx', '--caffemodel', str(model),
                 '-o', str(out)]
    pytest.importorskip('onnx')
    assert main(onnx_argv) == 0
    assert os.path.getsize(str(out) + '.onnx') > 0
    capsys.readouterr()
    assert main(onnx_argv) == 2
    assert '.onnx: already exists' in capsys.readouterr().err
