"""examples/alexnet_finetune.py: AlexNet from 1000 ImageNet classes to 10.

The example runs in-process (``main([...])``) on a caffemodel with
bvlc_alexnet's exact structure and random weights (``make_alexnet``, 233 MiB,
written once per session) and a tiny image folder written here (10 classes
of three 32x32 PNGs), so that nothing is fetched from the network.
"""

import contextlib
import importlib.util
import io
import json
import math
import os
import pathlib
import shutil

import chainer_finetune  # noqa: F401  (before chainer)

import chainer  # noqa: E402
import numpy  # noqa: E402
import pytest  # noqa: E402

from chainer_finetune import frozen_paths  # noqa: E402
from chainer_finetune import load_caffe  # noqa: E402
from chainer_finetune.caffe.layers import caffe_pooled_size  # noqa: E402
from chainer_finetune.caffe.zoo_shapes import alexnet_writer  # noqa: E402
from chainer_finetune.caffe.zoo_shapes import make_alexnet  # noqa: E402

import caffe_reference  # noqa: E402
from mpi_check import needs_mpi  # noqa: E402
import mpi_check  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'examples' / 'alexnet_finetune.py'

CONVS = ['conv1', 'conv2', 'conv3', 'conv4', 'conv5']
LINKS = CONVS + ['fc6', 'fc7', 'fc8']
N_CLASS = 10


def _load_example():
    spec = importlib.util.spec_from_file_location('alexnet_finetune', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _load_example()


# Large files (the caffemodel, cache entries, snapshots and saved models:
# about 2.5 GB in all) are removed when their fixture ends: pytest keeps the
# temporary directories of the last three sessions.

@pytest.fixture(scope='session')
def alexnet_file(tmp_path_factory):
    """bvlc_alexnet's structure with random weights, and its weights."""
    directory = tmp_path_factory.mktemp('example_alexnet')
    path = directory / 'bvlc_alexnet.caffemodel'
    # The released file's layout (Data layer, loss head), as the real one.
    writer = make_alexnet(path, seed=5, train_layers=True)
    weights = {name: [b.copy() for b in writer.blob_arrays(name)]
               for name in LINKS}
    yield path, weights
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope='module')
def scratch(tmp_path_factory):
    """Makes directories that are removed after the module."""
    made = []

    def make(name):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope='module')
def cache_dir(scratch):
    """A private net cache for the module (load_caffe(cache=True))."""
    path = scratch('example_cache')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('CHAINER_FINETUNE_CACHE', str(path))
        yield path


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """root/<class>/*.png: 10 classes, 3 images each, 32x32 RGB."""
    from PIL import Image
    root = tmp_path_factory.mktemp('images')
    rs = numpy.random.RandomState(0)
    for c in range(N_CLASS):
        d = root / 'class{:02d}'.format(c)
        d.mkdir()
        color = rs.randint(0, 256, size=3)
        for i in range(3):
            noise = rs.randint(-40, 41, size=(32, 32, 3))
            img = numpy.clip(color + noise, 0, 255).astype(numpy.uint8)
            Image.fromarray(img).save(d / '{}.png'.format(i))
    return root


def _run(args, capsys):
    parsed = example.parse_args(args)
    result = example.run(parsed)
    return result, capsys.readouterr().out


def _common_args(caffemodel, data, out):
    return ['--caffemodel', str(caffemodel), '--data', str(data),
            '--train-per-class', '2', '--test-per-class', '1',
            '--batchsize', '4', '--iterations', '2', '--device', '@numpy',
            '--out', str(out)]


@pytest.fixture(scope='module')
def hook_run(alexnet_file, cache_dir, image_folder, scratch):
    """The default run (DelGradient hook), 2 iterations."""
    out = scratch('out_hook')
    parsed = example.parse_args(_common_args(alexnet_file[0], image_folder,
                                             out))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = example.run(parsed)
    return result, buf.getvalue()


# -- the model ----------------------------------------------------------------

def test_pooling_sizes_match_caffe():
    # Caffe rounds pooled sizes up; Chainer's cover_all does the same.
    for size, expected in ((55, 27), (27, 13), (13, 6)):
        assert caffe_pooled_size(size, 3, 2, 0, True, False) == expected
        x = numpy.zeros((1, 1, size, size), numpy.float32)
        assert example.max_pool(x).shape[2:] == (expected, expected)


@pytest.fixture(scope='module')
def caffe_net(alexnet_file):
    # Never modified: copy_model only reads its source.
    return load_caffe(alexnet_file[0])


def test_alexnet_computes_what_caffe_computes(caffe_net):
    """The example's AlexNet against tests/caffe_reference.py's forward pass
    of the same caffemodel (Caffe's layers transcribed in NumPy), not
    against the library's own CaffeNet."""
    model = example.AlexNet(1000)
    report = chainer_finetune.copy_model(caffe_net, model, strict=True)
    assert report.copied_links == LINKS
    x = numpy.random.RandomState(3).uniform(
        -100, 100, (2, 3, 227, 227)).astype(numpy.float32)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        features = model.features(x)
        got = model(x)
    # alexnet_file's weights: make_alexnet(seed=5), deploy structure.
    blobs = caffe_reference.forward_net(alexnet_writer(seed=5), {'data': x})
    assert [blobs[p].shape[2:] for p in ('pool1', 'pool2', 'pool5')] == [
        (27, 27), (13, 13), (6, 6)]
    assert features.shape == (2, 256, 6, 6)
    for name, ours, expected in (('pool5', features.array, blobs['pool5']),
                                 ('fc8', got.array, blobs['fc8'])):
        scale = float(numpy.abs(expected).max())
        assert scale > 0, name
        numpy.testing.assert_allclose(ours, expected, rtol=1e-4,
                                      atol=1e-4 * scale, err_msg=name)


def test_pretrained_alexnet_copies_all_but_fc8(alexnet_file, caffe_net):
    _, weights = alexnet_file
    model, report = example.pretrained_alexnet(caffe_net, N_CLASS)
    assert report.copied_links == LINKS[:-1]
    assert report.skipped_links == ['fc8']
    for name in LINKS[:-1]:
        link = getattr(model, name)
        numpy.testing.assert_array_equal(link.W.array, weights[name][0])
        numpy.testing.assert_array_equal(link.b.array, weights[name][1])
    assert model.fc8.W.shape == (N_CLASS, 4096)
    assert not numpy.any(model.fc8.b.array)       # fresh: bias 0


# -- the script ---------------------------------------------------------------

def test_report_printed(hook_run):
    result, out = hook_run
    lines = out.splitlines()
    for name in LINKS[:-1]:
        for value in ('W', 'b'):
            assert any(line.split()[:3] == ['copied', name + '/' + value,
                                            name + '/' + value]
                       for line in lines), (name, value)
    fc8_w = [line for line in lines
             if line.split()[:3] == ['skipped', 'fc8/W', 'fc8/W']]
    assert len(fc8_w) == 1
    assert '(1000, 4096)' in fc8_w[0] and '(10, 4096)' in fc8_w[0]
    assert result.report.skipped_links == ['fc8']


def test_frozen_convs_unchanged_fc_trained(hook_run, alexnet_file):
    result, _ = hook_run
    _, weights = alexnet_file
    model = result.model
    for name in CONVS:
        numpy.testing.assert_array_equal(getattr(model, name).W.array,
                                         weights[name][0])
        numpy.testing.assert_array_equal(getattr(model, name).b.array,
                                         weights[name][1])
    for name in ('fc6', 'fc7'):
        assert not numpy.array_equal(getattr(model, name).W.array,
                                     weights[name][0]), name
    assert numpy.any(model.fc8.b.array)           # was 0 before training


def test_outputs_written(hook_run):
    result, out = hook_run
    d = pathlib.Path(result.out)
    assert (d / 'log').is_file()
    assert (d / 'snapshot_iter_2').is_file()
    log = json.loads((d / 'log').read_text())
    assert log[-1]['iteration'] == 2
    for key in ('validation/main/loss', 'validation/main/accuracy'):
        assert result.evaluation[key] == pytest.approx(log[-1][key])
    if chainer.training.extensions.PlotReport.available():
        assert (d / 'loss.png').is_file()
        assert (d / 'accuracy.png').is_file()
    assert 'final evaluation' in out


@pytest.fixture(scope='module')
def predictions(hook_run):
    """The trained model's outputs on two test images (train=False)."""
    result, _ = hook_run
    x = numpy.stack([result.test[i][0] for i in range(2)])
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return x, result.model(x).array


def test_backward_runs_through_convs_with_hook(hook_run, predictions):
    # The DelGradient hook leaves the graph whole (the classic recipe).
    x, _ = predictions
    assert hook_run[0].model.features(x).requires_grad


@pytest.mark.parametrize('fmt', ['npz', 'h5'])
def test_saved_model_reloads(hook_run, predictions, fmt):
    result, _ = hook_run
    x, expected = predictions
    loaded = example.AlexNet(N_CLASS)
    load = chainer.serializers.load_npz if fmt == 'npz' \
        else chainer.serializers.load_hdf5
    load(os.path.join(result.out, 'model.' + fmt), loaded)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        got = loaded(x).array
    assert got.shape == (2, N_CLASS)
    numpy.testing.assert_array_equal(got, expected)


def test_airtight_freeze(alexnet_file, cache_dir, image_folder, scratch,
                         capsys):
    _, weights = alexnet_file
    out_dir = scratch('out_airtight')
    result, out = _run(_common_args(alexnet_file[0], image_folder, out_dir)
                       + ['--freeze-mode', 'airtight'], capsys)
    model = result.model
    assert frozen_paths(model) == CONVS
    assert 'frozen: conv1, conv2, conv3, conv4, conv5' in out
    for name in CONVS:
        link = getattr(model, name)
        numpy.testing.assert_array_equal(link.W.array, weights[name][0])
    assert numpy.any(model.fc8.b.array)
    # The final evaluation (from the last iteration's Evaluator) is what
    # evaluating the trained model gives.
    again = example.evaluate(result.classifier, result.test, 4,
                             result.device)
    assert again == pytest.approx(result.evaluation, rel=1e-6)
    # Backward stops at the frozen prefix: pool5 needs no gradient.
    x = numpy.stack([result.test[i][0] for i in range(2)])
    assert not model.features(x).requires_grad
    assert (out_dir / 'model.npz').is_file()


def test_main_generates_caffemodel(tmp_path, caplog):
    path = tmp_path / 'random_alexnet.caffemodel'
    try:
        assert example.main(['--generate-caffemodel', str(path)]) == 0
        assert path.stat().st_size > 200 * 2 ** 20
        assert 'RANDOM weights' in caplog.text
        net = load_caffe(path, stop_at='conv1')
        # conv1 scaled down from He's std so that fine-tuning is stable.
        assert float(net.conv1.W.array.std()) == pytest.approx(
            math.sqrt(2 / 363) / example.GENERATED_CONV1_DIVISOR, rel=0.01)
        del net
        mtime = path.stat().st_mtime_ns
        assert example.main(['--generate-caffemodel', str(path)]) == 0
        assert path.stat().st_mtime_ns == mtime   # not overwritten
        assert 'not overwritten' in caplog.text
    finally:
        path.unlink(missing_ok=True)


@needs_mpi
def test_communicator_runs_the_example_across_two_processes(
        alexnet_file, image_folder, scratch):
    """``mpiexec -n 2 ... --communicator naive``: rank 0 alone prints and
    writes; the convolutions stay the file's; the held-out numbers over
    both ranks' shards are what one process computes on the whole test set
    with the saved model."""
    out = scratch('out_mpi')
    args = _common_args(alexnet_file[0], image_folder, out) + [
        '--communicator', 'naive', '--no-cache']
    done = mpi_check.launch([str(SCRIPT)] + args, str(scratch('mpi_cache')),
                            processes=2, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count('final evaluation') == 1, done.stdout
    assert done.stdout.count('values copied') == 1   # the copy report
    log = json.loads((out / 'log').read_text())
    assert log[-1]['iteration'] == 2
    assert (out / 'snapshot_iter_2').is_file()
    model = example.AlexNet(N_CLASS)
    chainer.serializers.load_npz(str(out / 'model.npz'), model)
    _, weights = alexnet_file
    for name in CONVS:
        numpy.testing.assert_array_equal(getattr(model, name).W.array,
                                         weights[name][0])
    assert numpy.any(model.fc8.b.array)
    # One batch of all 10 test images: the mean over examples, as the
    # distributed evaluator adds them up over both ranks' shards.
    _, _, test_ds = example._datasets(example.parse_args(args))
    again = example.evaluate(chainer.links.Classifier(model), test_ds,
                             len(test_ds), '@numpy')
    for key, value in again.items():
        assert log[-1][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_unknown_communicator_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        example.parse_args(['--caffemodel', 'm.caffemodel', '--communicator',
                            'hierarchical'])
    assert "invalid choice: 'hierarchical'" in capsys.readouterr().err
