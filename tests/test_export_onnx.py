"""ONNX export (chainer_finetune.onnx_export), run by onnxruntime.

Every model is exported once with a free batch dimension and run at batch
1, 3 and 16 against Chainer in inference mode: open_nsfw with a replaced
head and perturbed weights and statistics, a fine-tuning job's
CaffeClassifier (backbone + new head), the AlexNet example's Chain with
bvlc_alexnet-shaped generated weights, and the all-layers test net.

onnx, onnxruntime and onnx-chainer (``pip install --no-deps
onnx-chainer==1.6.0``) come with the ``[onnx]`` extra and tox; without them
these tests skip, except under CI (``CI`` set), where that is a failure.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import chainer_finetune  # noqa: F401  (before chainer)

import chainer  # noqa: E402
import numpy  # noqa: E402
import pytest  # noqa: E402

from chainer_finetune import hub  # noqa: E402
from chainer_finetune import load_caffe  # noqa: E402
from chainer_finetune import replace_head  # noqa: E402
from chainer_finetune.caffe.zoo_shapes import alexnet_writer  # noqa: E402
from chainer_finetune.errors import OnnxExportError  # noqa: E402
from chainer_finetune.finetune.model import CaffeClassifier  # noqa: E402
from chainer_finetune.onnx_export import export_onnx  # noqa: E402

import caffe_nets  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MISSING = [name for name in ('onnx', 'onnxruntime', 'onnx_chainer')
            if importlib.util.find_spec(name) is None]
if _MISSING:
    if os.environ.get('CI'):
        raise ImportError('CI must run the ONNX tests; missing: {} (see '
                          'tox.ini)'.format(', '.join(_MISSING)))
    pytest.skip('needs {} (the [onnx] extra)'.format(', '.join(_MISSING)),
                allow_module_level=True)

import onnx  # noqa: E402
import onnxruntime  # noqa: E402

BATCHES = (1, 3, 16)
#: Max abs difference allowed between onnxruntime and Chainer.
TOLERANCE = 1e-5


def _cache_dir():
    if os.environ.get('CHAINER_FINETUNE_CACHE'):
        return None
    return os.path.join(REPO, '.cache', 'models')


@pytest.fixture(scope='module')
def nsfw_net():
    files = hub.fetch_open_nsfw(_cache_dir())
    return load_caffe(files.caffemodel, prototxt=files.prototxt)


def _perturb(net, seed):
    """Every parameter and BatchNorm statistic times 1 +- 20%, so that a
    folding mistake (a missing factor, mean or bias) shows."""
    rng = numpy.random.RandomState(seed)
    for _, param in sorted(net.namedparams()):
        param.array *= rng.uniform(0.8, 1.2, param.shape).astype(
            param.dtype)
    for link in net.links():
        if isinstance(link, chainer.links.BatchNormalization):
            link.avg_mean += rng.uniform(-0.1, 0.1, link.avg_mean.shape)
            link.avg_var *= rng.uniform(0.8, 1.2, link.avg_var.shape)


def _session(path):
    return onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])


def _max_diffs(path, chainer_forward, input_shape, seed=0, scale=100.0):
    """Max abs difference onnxruntime vs Chainer per batch size, inputs
    uniform in [-scale, scale]; also checks it is within 3e-6 of the
    largest output (float32 sums in another order)."""
    session = _session(path)
    rng = numpy.random.RandomState(seed)
    diffs = {}
    for batch in BATCHES:
        x = rng.uniform(-scale, scale, (batch,) + input_shape).astype(
            numpy.float32)
        with chainer.using_config('train', False), \
                chainer.no_backprop_mode():
            expected = chainer_forward(x).array
        got, = session.run(None, {'input': x})
        assert got.shape == expected.shape
        assert numpy.abs(expected).max() > 1e-2   # not trivially small
        diffs[batch] = float(numpy.abs(got - expected).max())
        assert diffs[batch] <= 3e-6 * numpy.abs(expected).max()
    return diffs


def _params(link):
    return {n: p.array.copy() for n, p in link.namedparams()}


def _same(a, b):
    return a.keys() == b.keys() and all(
        numpy.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def nsfw_replaced(nsfw_net):
    net = nsfw_net.copy('copy')
    replace_head(net, 'fc_nsfw', 5, seed=3)
    _perturb(net, 1)
    return net


@pytest.mark.network
@pytest.mark.slow
def test_open_nsfw_replaced_head_at_batch_1_3_16(nsfw_replaced, tmp_path):
    net = nsfw_replaced
    before = _params(net)
    path = export_onnx(net, tmp_path / 'nsfw.onnx', input_shape=(3, 224, 224),
                       output_name='fc_nsfw')
    assert path == str(tmp_path / 'nsfw.onnx')
    assert _same(before, _params(net))   # the model is not changed

    def forward(x):
        return net(inputs={'data': x}, outputs=['fc_nsfw'])[0]
    diffs = _max_diffs(path, forward, (3, 224, 224))
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.network
@pytest.mark.slow
def test_folding_on_and_off_agree_and_folding_shrinks(nsfw_replaced,
                                                      tmp_path):
    folded = export_onnx(nsfw_replaced, tmp_path / 'f.onnx',
                         input_shape=(3, 224, 224))
    plain = export_onnx(nsfw_replaced, tmp_path / 'p.onnx',
                        input_shape=(3, 224, 224), fold_batchnorm=False)
    x = numpy.random.RandomState(2).uniform(
        -100, 100, (3, 3, 224, 224)).astype(numpy.float32)
    y_folded, = _session(folded).run(None, {'input': x})
    y_plain, = _session(plain).run(None, {'input': x})
    assert numpy.abs(y_folded - y_plain).max() <= TOLERANCE
    ops_folded = [n.op_type for n in onnx.load(folded).graph.node]
    ops_plain = [n.op_type for n in onnx.load(plain).graph.node]
    # 53 BatchNorm + 53 Scale (Mul, Add) layers, all after convolutions.
    assert ops_plain.count('BatchNormalization') == 53
    assert 'BatchNormalization' not in ops_folded
    assert len(ops_plain) - len(ops_folded) == 3 * 53
    # onnx-chainer's own graph: 107 Expand + 107 Reshape for the Scales.
    assert 'Expand' not in ops_plain and 'Constant' not in ops_plain


@pytest.mark.network
@pytest.mark.slow
def test_caffe_classifier_backbone_and_head(nsfw_net, tmp_path):
    model = CaffeClassifier(nsfw_net.copy('copy'), 'data', 'pool',
                            n_class=4)
    rng = numpy.random.RandomState(4)
    with chainer.using_config('train', False):
        model(numpy.zeros((1, 3, 224, 224), numpy.float32))  # sizes head
    model.head_norm.avg_mean[:] = rng.uniform(-0.5, 0.5, 1024)
    model.head_norm.avg_var[:] = rng.uniform(0.5, 2, 1024)
    model.head_norm.gamma.array[:] = rng.uniform(0.5, 2, 1024)
    model.head_norm.beta.array[:] = rng.uniform(-1, 1, 1024)
    path = export_onnx(model, tmp_path / 'clf.onnx',
                       input_shape=(3, 224, 224))
    diffs = _max_diffs(path, model, (3, 224, 224), seed=5)
    assert max(diffs.values()) <= TOLERANCE, diffs


def _alexnet_example():
    spec = importlib.util.spec_from_file_location(
        'alexnet_finetune', os.path.join(REPO, 'examples',
                                         'alexnet_finetune.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_alexnet_example_chain(tmp_path):
    """The example's Chain with bvlc_alexnet-shaped generated weights
    (61 M parameters); LRN, grouped convolutions, ceil-mode pooling.

    Inputs in [-0.5, 0.5] keep the scores of these random weights near 5,
    where 1e-5 is 2e-6 of the output; with pixel-scale inputs (+-100) the
    scores reach about 380 and differ by 4e-4 (the same 1e-6 relative).
    """
    model = _alexnet_example().AlexNet(1000)
    writer = alexnet_writer(seed=5)
    for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7',
                 'fc8'):
        weights, bias = writer.blob_arrays(name)
        link = getattr(model, name)
        link.W.array[...] = weights.reshape(link.W.shape)
        link.b.array[...] = bias
    path = export_onnx(model, tmp_path / 'alexnet.onnx',
                       input_shape=(3, 227, 227))
    diffs = _max_diffs(path, model, (3, 227, 227), scale=0.5)
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_all_layers_net_and_reshape_of_a_non_batch_first_value(tmp_path):
    """The test net with every convertible layer type; its ``fc_t``
    (InnerProduct on axis 2) reshapes an (N*3, 4) value to (N, 3, 4),
    whose batch comes from the input's shape at run time."""
    writer = caffe_nets.make_all_layers_net(tmp_path / 'a.caffemodel',
                                            tmp_path / 'a.prototxt')
    del writer
    net = load_caffe(tmp_path / 'a.caffemodel', tmp_path / 'a.prototxt')
    for output in ('prob', 'fc_t'):
        path = export_onnx(net, tmp_path / (output + '.onnx'),
                           input_shape=(4, 7, 7), input_name='data',
                           output_name=output)

        def forward(x, output=output):
            return net(inputs={'data': x}, outputs=[output])[0]
        diffs = _max_diffs(path, forward, (4, 7, 7))
        assert max(diffs.values()) <= TOLERANCE, (output, diffs)


def test_unconvertible_function_names_the_caffe_layer(tmp_path):
    caffe_nets.make_all_layers_net(tmp_path / 'a.caffemodel',
                                   tmp_path / 'a.prototxt')
    net = load_caffe(tmp_path / 'a.caffemodel', tmp_path / 'a.prototxt')
    with pytest.raises(OnnxExportError,
                       match="DetectionOutputFunction.*layer 'ssd_det'"):
        export_onnx(net, tmp_path / 'det.onnx', input_shape=(4, 7, 7),
                    input_name='data', output_name='ssd_det')
    assert not (tmp_path / 'det.onnx').exists()


class _Small(chainer.Chain):
    """conv + BN + flatten + linear: Reshape to (N, -1), BatchNorm folding."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.conv = chainer.links.Convolution2D(3, 4, 3)
            self.bn = chainer.links.BatchNormalization(4)
            self.fc = chainer.links.Linear(4 * 6 * 6, 5)
        rng = numpy.random.RandomState(0)
        self.bn.avg_mean[:] = rng.uniform(-1, 1, 4)
        self.bn.avg_var[:] = rng.uniform(0.5, 2, 4)

    def forward(self, x):
        h = chainer.functions.relu(self.bn(self.conv(x)))
        return self.fc(h.reshape(h.shape[0], -1))


def test_ir_version_opset_and_symbolic_batch(tmp_path):
    path = export_onnx(_Small(), tmp_path / 's.onnx', input_shape=(3, 8, 8))
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    # IR 6: the lowest that opset 11 allows (onnx 1.6), read by every
    # onnxruntime since 1.0; onnx-chainer wrote onnx's newest.
    assert model.ir_version == 6
    assert [(o.domain, o.version) for o in model.opset_import] == [('', 11)]
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == 'batch'
    assert [i.name for i in model.graph.input] == ['input']
    ops = [n.op_type for n in model.graph.node]
    assert ops == ['Conv', 'Relu', 'Reshape', 'Gemm']   # BN folded


def test_fixed_batch_and_the_baked_batch_it_replaces(tmp_path):
    """onnx-chainer's own file fails at another batch size; a fixed batch
    is declared as such."""
    onnx_chainer = chainer_finetune.onnx_export.import_onnx_chainer()
    model = _Small()
    raw = str(tmp_path / 'raw.onnx')
    with chainer.using_config('train', False):
        onnx_chainer.export(model, numpy.zeros((2, 3, 8, 8), numpy.float32),
                            filename=raw, opset_version=11)
    with pytest.raises(Exception):
        _session(raw).run(None, {
            _session(raw).get_inputs()[0].name:
                numpy.zeros((3, 3, 8, 8), numpy.float32)})
    path = export_onnx(model, tmp_path / 'fixed.onnx', input_shape=(3, 8, 8),
                       batch=2)
    dim = onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 2
    out, = _session(path).run(None, {'input': numpy.ones((2, 3, 8, 8),
                                                         numpy.float32)})
    assert out.shape == (2, 5)


def test_refuses_to_overwrite(tmp_path):
    target = tmp_path / 'model.onnx'
    target.write_bytes(b'keep me')
    with pytest.raises(FileExistsError, match=str(target)):
        export_onnx(_Small(), target, input_shape=(3, 8, 8))
    assert target.read_bytes() == b'keep me'
    export_onnx(_Small(), target, input_shape=(3, 8, 8), overwrite=True)
    assert onnx.load(str(target)).graph.node


def test_opset_out_of_range(tmp_path):
    with pytest.raises(OnnxExportError, match='opset 13'):
        export_onnx(_Small(), tmp_path / 'x.onnx', input_shape=(3, 8, 8),
                    opset=13)


def _child(code):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep +
               os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300,
                          env=env, cwd=REPO)


def test_shims_only_when_onnx_chainer_is_imported():
    proc = _child('''
        import importlib.util, sys
        import chainer_finetune, chainer_finetune.onnx_export
        from chainer_finetune import _compat
        assert 'onnx_chainer' not in sys.modules
        assert 'onnx' not in sys.modules
        assert _compat.ONNX_CHAINER_APPLIED == []
        onnx_chainer = chainer_finetune.onnx_export.import_onnx_chainer()
        assert onnx_chainer.export.__globals__['_available']
        import onnx
        had_mapping = importlib.util.find_spec('onnx.mapping') is not None
        shim = 'onnx.mapping for onnx_chainer'
        assert (shim in _compat.ONNX_CHAINER_APPLIED) == (not had_mapping)
        # Temporary: nothing of the stand-ins is left behind.
        if not had_mapping:
            assert 'onnx.mapping' not in sys.modules
            assert not hasattr(onnx, 'mapping')
        print(onnx_chainer.MAXIMUM_OPSET_VERSION)
    ''')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '11'


@pytest.mark.parametrize('blocked', ['onnx_chainer', 'onnx'])
def test_missing_dependency_error_names_the_extra(blocked, tmp_path):
    # None in sys.modules makes `import NAME` raise ImportError: the child
    # interpreter cannot import it, as if it were not installed.
    proc = _child('''
        import sys
        sys.modules[{blocked!r}] = None
        import chainer_finetune, chainer
        from chainer_finetune.onnx_export import export_onnx
        from chainer_finetune.errors import OnnxUnavailableError
        model = chainer.Sequential(chainer.links.Linear(3, 2))
        try:
            export_onnx(model, {path!r}, input_shape=(3,))
        except OnnxUnavailableError as e:
            print(e)
    '''.format(blocked=blocked, path=str(tmp_path / 'x.onnx')))
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'chainer_finetune[onnx]'" in proc.stdout
    assert 'onnx-chainer==1.6.0' in proc.stdout
    assert not (tmp_path / 'x.onnx').exists()
