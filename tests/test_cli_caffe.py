"""The model subcommands of ``chainer-finetune``: inspect, convert, cache."""

import argparse
import json
import os
import subprocess
import sys

import chainer_finetune  # noqa: F401  (before chainer)

import chainer
import numpy
import pytest

from chainer_finetune import cli
from chainer_finetune.caffe import cache
from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.caffe.loader import load_caffe

# (layer, type, bottoms -> tops, parameter shapes, output, parameters) for
# the net of write_net with input (2, 3, 9, 9).
EXPECTED_ROWS = [
    ('data', 'Input', '- -> data', '-', '2x3x9x9', 0),
    ('conv1/7x7_s2', 'Convolution', 'data -> conv1', 'W 4x3x3x3, b 4',
     '2x4x7x7', 112),
    ('conv1/bn', 'BatchNorm', 'conv1 -> conv1', '(avg_mean 4, avg_var 4)',
     '2x4x7x7', 0),
    ('conv1/scale', 'Scale', 'conv1 -> conv1', 'W 4, b 4', '2x4x7x7', 8),
    ('conv1/prelu', 'PReLU', 'conv1 -> conv1', 'W 4', '2x4x7x7', 4),
    ('pool1', 'Pooling', 'conv1 -> pool1', '-', '2x4x3x3', 0),
    ('fc/t', 'InnerProduct', 'pool1 -> fc_t', 'W 6x36, b 6', '2x6', 222),
    ('fc8', 'InnerProduct', 'fc_t -> fc8', 'W 5x6, b 5', '2x5', 35),
    ('prob', 'Softmax', 'fc8 -> prob', '-', '2x5', 0),
    ('loss', 'SoftmaxWithLoss', 'fc8,label -> loss', '-', '-', 0),
]
TOTAL = 381


def write_net(directory):
    rng = numpy.random.RandomState(0)
    w = NetWriter('clinet')
    w.input('data', (2, 3, 9, 9))
    # The loss's label comes from a TRAIN-only data layer, dropped for the
    # TEST phase: 'label' is then an input without a declared shape.
    w.layer('labels', 'Data', (), 'label', include={'phase': 'TRAIN'})
    w.layer('conv1/7x7_s2', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[rng.randn(4, 3, 3, 3), rng.randn(4)])
    w.layer('conv1/bn', 'BatchNorm', 'conv1', 'conv1',
            blobs=[rng.randn(4), rng.uniform(0.5, 1.5, 4), [1.0]])
    w.layer('conv1/scale', 'Scale', 'conv1', 'conv1',
            params={'scale_param': {'bias_term': True}},
            blobs=[rng.randn(4), rng.randn(4)])
    w.layer('conv1/prelu', 'PReLU', 'conv1', 'conv1', blobs=[rng.randn(4)])
    w.layer('pool1', 'Pooling', 'conv1', 'pool1',
            params={'pooling_param': {'pool': 'MAX', 'kernel_size': 3,
                                      'stride': 2}})
    w.layer('fc/t', 'InnerProduct', 'pool1', 'fc_t',
            params={'inner_product_param': {'num_output': 6,
                                            'transpose': True}},
            blobs=[rng.randn(36, 6), rng.randn(6)])
    w.layer('fc8', 'InnerProduct', 'fc_t', 'fc8',
            params={'inner_product_param': {'num_output': 5}},
            blobs=[rng.randn(5, 6), rng.randn(5)])
    w.layer('prob', 'Softmax', 'fc8', 'prob')
    w.layer('loss', 'SoftmaxWithLoss', ['fc8', 'label'], 'loss')
    model = os.path.join(directory, 'net.caffemodel')
    prototxt = os.path.join(directory, 'net.prototxt')
    w.write_caffemodel(model)
    w.write_prototxt(prototxt)
    return model, prototxt


@pytest.fixture
def net_files(tmp_path):
    return write_net(str(tmp_path))


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def prob(net):
    x = numpy.linspace(-1, 1, 2 * 3 * 9 * 9,
                       dtype=numpy.float32).reshape(2, 3, 9, 9)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return net(inputs={'data': x}, outputs=['prob'])[0].array


# --------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------

def test_inspect_table(capsys, net_files):
    model, prototxt = net_files
    code, out, err = run_cli(capsys, 'inspect', model, '--prototxt',
                             prototxt)
    assert code == 0, err
    lines = out.splitlines()
    for name, type_, blobs, params, shape, count in EXPECTED_ROWS:
        [row] = [line for line in lines if line.split()[:2] == [name,
                                                                type_]]
        assert blobs in row and params in row, row
        cells = row.split()
        assert cells[-2:] == [shape, '{:,}'.format(count)], row
    assert '{} parameters'.format(TOTAL) in out
    assert '{} layers'.format(len(EXPECTED_ROWS)) in out


def test_inspect_with_input_shape(capsys, net_files):
    model, prototxt = net_files
    code, out, _ = run_cli(capsys, 'inspect', model, '--prototxt', prototxt,
                           '--input-shape', '5,3,9,9', '--json')
    assert code == 0
    report = json.loads(out)
    rows = {r['name']: r for r in report['layers']}
    assert rows['conv1/7x7_s2']['output'] == [[5, 4, 7, 7]]
    assert rows['prob']['output'] == [[5, 5]]
    assert rows['loss']['output'] == [None]   # needs a label
    assert rows['fc/t']['params'] == {'W': [6, 36], 'b': [6]}
    net = load_caffe(model, prototxt)
    assert report['total_params'] == sum(p.size for p in net.params())
    for name, _, _, _, _, count in EXPECTED_ROWS:
        assert rows[name]['param_count'] == count


def test_inspect_named_input_and_bigger_image(capsys, tmp_path):
    w = NetWriter('fcn')
    w.input('image', (1, 3, 8, 8))
    w.layer('conv', 'Convolution', 'image', 'conv',
            params={'convolution_param': {'num_output': 2, 'kernel_size': 3,
                                          'pad': 1, 'stride': 2}},
            blobs=[numpy.ones((2, 3, 3, 3)), numpy.zeros(2)])
    model = str(tmp_path / 'fcn.caffemodel')
    w.write_caffemodel(model)
    code, out, _ = run_cli(capsys, 'inspect', model, '--input-shape',
                           'image=1,3,32,48')
    assert code == 0
    assert '1x2x16x24' in out
    code, _, err = run_cli(capsys, 'inspect', model, '--input-shape',
                           'data=1,3,32,48')
    assert code == 2 and "'data'" in err and 'image' in err


def test_inspect_incompatible_input_shape(capsys, net_files):
    model, prototxt = net_files
    code, out, err = run_cli(capsys, 'inspect', model, '--input-shape',
                             '1,3,15,15')
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert '1x3x15x15' in err and '--input-shape' in err


def test_inspect_bad_shape_argument(capsys, net_files):
    with pytest.raises(SystemExit) as e:
        cli.main(['inspect', net_files[0], '--input-shape', '1,three'])
    assert e.value.code == 2
    assert 'N,C,H,W' in capsys.readouterr().err


def test_inspect_weights_file(capsys, net_files, tmp_path):
    model, prototxt = net_files
    out_file = str(tmp_path / 'w.npz')
    assert run_cli(capsys, 'convert', model, '-o', out_file)[0] == 0
    code, out, _ = run_cli(capsys, 'inspect', out_file)
    assert code == 0 and 'conv1/7x7_s2' in out and '{} parameters'.format(
        TOTAL) in out


# --------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------

@pytest.mark.parametrize('suffix', ['h5', 'npz', 'pkl'])
def test_convert_writes_loadable_files(capsys, net_files, tmp_path, suffix):
    model, prototxt = net_files
    out_file = str(tmp_path / ('out.' + suffix))
    code, out, err = run_cli(capsys, 'convert', model, '--prototxt',
                             prototxt, '-o', out_file)
    assert code == 0, err
    assert out_file in out
    if suffix == 'pkl':
        loaded = cache.load_pickle(out_file)
    else:
        loaded = load_caffe(prototxt=prototxt, weights=out_file)
    numpy.testing.assert_array_equal(prob(loaded),
                                     prob(load_caffe(model, prototxt)))


def test_convert_does_not_overwrite_without_force(capsys, net_files,
                                                  tmp_path):
    model, _ = net_files
    target = tmp_path / 'out.h5'
    target.write_bytes(b'mine')
    code, _, err = run_cli(capsys, 'convert', model, '-o', str(target))
    assert code == 2 and '--force' in err and str(target) in err
    assert target.read_bytes() == b'mine'
    code, _, err = run_cli(capsys, 'convert', model, '-o', str(target),
                           '--force')
    assert code == 0, err
    assert target.read_bytes()[:4] == b'\x89HDF'


def test_convert_unknown_output_type(capsys, net_files, tmp_path):
    code, _, err = run_cli(capsys, 'convert', net_files[0], '-o',
                           str(tmp_path / 'out.caffemodel'))
    assert code == 2 and '.h5, .npz or .pkl' in err


def test_convert_stop_at(capsys, net_files, tmp_path):
    model, prototxt = net_files
    out_file = str(tmp_path / 'backbone.npz')
    code, _, _ = run_cli(capsys, 'convert', model, '--stop-at', 'pool1',
                         '-o', out_file)
    assert code == 0
    net = load_caffe(weights=out_file)
    assert 'fc8' not in net.link_names and 'conv1/prelu' in net.link_names


# --------------------------------------------------------------------------
# Errors: one line, exit status 2
# --------------------------------------------------------------------------

@pytest.mark.parametrize('content', [b'', b'\x08\x96\x01garbage\xff\xff',
                                     b'name: "text"\nlayer {}\n'])
def test_bad_model_file(capsys, tmp_path, content):
    bad = tmp_path / 'bad.caffemodel'
    bad.write_bytes(content)
    for command in (['inspect'], ['convert', '-o', str(tmp_path / 'o.h5')]):
        code, out, err = run_cli(capsys, command[0], str(bad), *command[1:])
        assert code == 2
        assert len(err.strip().splitlines()) == 1
        assert str(bad) in err and err.startswith('chainer-finetune: error:')
    assert not (tmp_path / 'o.h5').exists()


def test_missing_files(capsys, tmp_path, net_files):
    missing = str(tmp_path / 'nope.caffemodel')
    code, _, err = run_cli(capsys, 'inspect', missing)
    assert code == 2 and missing in err
    code, _, err = run_cli(capsys, 'inspect', net_files[0], '--prototxt',
                           str(tmp_path / 'nope.prototxt'))
    assert code == 2 and 'nope.prototxt' in err


def test_python_m_reports_without_traceback(tmp_path, net_files):
    bad = tmp_path / 'broken.caffemodel'
    bad.write_bytes(open(net_files[0], 'rb').read()[:-7])
    proc = subprocess.run(
        [sys.executable, '-m', 'chainer_finetune', 'inspect', str(bad)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert 'Traceback' not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0]
    proc = subprocess.run(
        [sys.executable, '-m', 'chainer_finetune', 'inspect', net_files[0]],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and 'conv1/7x7_s2' in proc.stdout


# --------------------------------------------------------------------------
# cache, registry
# --------------------------------------------------------------------------

def test_cache_subcommand(capsys, net_files, tmp_path, monkeypatch):
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(tmp_path / 'c'))
    model, prototxt = net_files
    load_caffe(model, prototxt, cache=True)
    code, out, _ = run_cli(capsys, 'cache')
    assert code == 0
    assert '1 entries' in out and model in out
    code, out, _ = run_cli(capsys, 'cache', '--clear')
    assert code == 0 and 'removed 1' in out
    assert cache.cache_info() == []


def test_a_subcommand_is_one_function(capsys, monkeypatch):
    monkeypatch.setattr(cli, '_COMMANDS', list(cli._COMMANDS))

    @cli.command('echo', 'print the argument',
                 cli.arg('word'), cli.arg('--twice', action='store_true'))
    def _echo(args: argparse.Namespace) -> int:
        print(args.word * (2 if args.twice else 1))
        return 3

    assert run_cli(capsys, 'echo', 'hi', '--twice')[:2] == (3, 'hihi\n')
    with pytest.raises(ValueError):
        cli.command('echo', 'again')(_echo)
    names = [c.name for c in cli._COMMANDS]
    assert {'info', 'inspect', 'convert', 'cache', 'echo'} <= set(names)


# --------------------------------------------------------------------------
# Progress display while reading
# --------------------------------------------------------------------------

def test_progress_callback_and_quiet_default(capsys, net_files):
    model, _ = net_files
    calls = []
    load_caffe(model, progress=lambda done, total: calls.append(
        (done, total)))
    size = os.path.getsize(model)
    assert calls and calls[-1] == (size, size)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    load_caffe(model)   # stderr is not a terminal here: nothing shown
    assert capsys.readouterr().err == ''
    load_caffe(model, progress=True)
    err = capsys.readouterr().err
    assert '\r' in err and '100%' in err and err.endswith('\n')


@pytest.mark.skipif(not hasattr(os, 'openpty'), reason='needs a pty')
def test_progress_shown_on_a_terminal(net_files, tmp_path):
    model, _ = net_files
    script = tmp_path / 'load.py'
    script.write_text(
        'import sys\n'
        'import chainer_finetune\n'
        'from chainer_finetune.caffe import loader\n'
        'loader.PROGRESS_MIN_BYTES = 0\n'
        'loader.load_caffe(sys.argv[1])\n')
    master, slave = os.openpty()
    try:
        proc = subprocess.run([sys.executable, str(script), model],
                              stderr=slave, stdout=subprocess.PIPE,
                              timeout=120)
        os.close(slave)
        slave = None
        shown = b''
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:   # EIO: the other end is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    assert b'reading net.caffemodel' in shown and b'100%' in shown


# --------------------------------------------------------------------------
# verify (the comparison itself is tested in test_caffe_opencv.py)
# --------------------------------------------------------------------------

def test_verify_subcommand_compares_with_opencv(capsys, tmp_path):
    pytest.importorskip('cv2')
    rng = numpy.random.RandomState(0)
    w = NetWriter('verifynet')
    w.input('data', (1, 3, 9, 9))
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[rng.randn(4, 3, 3, 3), rng.randn(4)])
    w.layer('relu1', 'ReLU', 'conv1', 'conv1')
    w.layer('pool1', 'Pooling', 'conv1', 'pool1',
            params={'pooling_param': {'pool': 'AVE', 'kernel_size': 3,
                                      'stride': 2}})
    w.layer('fc8', 'InnerProduct', 'pool1', 'fc8',
            params={'inner_product_param': {'num_output': 5}},
            blobs=[rng.randn(5, 36), rng.randn(5)])
    w.layer('prob', 'Softmax', 'fc8', 'prob')
    model = str(tmp_path / 'v.caffemodel')
    prototxt = str(tmp_path / 'v.prototxt')
    w.write_caffemodel(model)
    w.write_prototxt(prototxt)
    code, out, err = run_cli(capsys, 'verify', model, '--prototxt',
                             prototxt)
    assert code == 0, out + err
    for layer in ('conv1', 'relu1', 'pool1', 'fc8', 'prob'):
        assert layer in out
