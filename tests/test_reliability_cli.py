"""Issue 11, the command line: results never clobbered (``finetune --out``),
impossible input shapes and failing forwards as one line, ``--debug``,
tolerances checked, a full disk naming the file."""

import argparse
import errno
import os
import subprocess
import sys
import time

import chainer_finetune  # noqa: F401  (before chainer)

import chainer
import numpy
import pytest

from chainer_finetune import cli
from chainer_finetune import finetune
from chainer_finetune.caffe import verify
from chainer_finetune.caffe import weight_files
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.errors import FinetuneError, InputShapeError

from test_cli_caffe import run_cli, write_net


@pytest.fixture
def net_files(tmp_path):
    return write_net(str(tmp_path))


def one_error_line(code, err):
    """The CLI's contract for an error: status 2, one line, no traceback."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert 'Traceback' not in err
    return lines[0]


# --------------------------------------------------------------------------
# finetune --out into an earlier run's directory
# --------------------------------------------------------------------------

@pytest.fixture
def earlier_run(tmp_path):
    out = tmp_path / 'result'
    (out / 'pretrained').mkdir(parents=True)
    (out / 'pretrained' / 'best_model.npz').write_bytes(b'trained model')
    (out / 'report.md').write_text('# the earlier report\n')
    return out


def test_finetune_api_refuses_an_earlier_runs_directory(earlier_run):
    config = finetune.FinetuneConfig(caffemodel='missing.caffemodel',
                                     data='missing', out=str(earlier_run))
    with pytest.raises(FinetuneError) as e:
        finetune.run_finetune(config)
    message = str(e.value)
    assert str(earlier_run) in message and 'overwrite' in message
    assert 'report.md' in message and 'pretrained' in message
    assert (earlier_run / 'pretrained' / 'best_model.npz').read_bytes() == \
        b'trained model'
    assert (earlier_run / 'report.md').read_text() == \
        '# the earlier report\n'


def test_finetune_cli_refuses_then_overwrite_gets_past_the_check(
        capsys, earlier_run):
    argv = ['finetune', '--caffemodel', 'missing.caffemodel', '--data',
            str(earlier_run / 'no-such-data'), '--out', str(earlier_run)]
    line = one_error_line(*run_cli(capsys, *argv)[::2])
    assert str(earlier_run) in line and '--overwrite' in line
    # With --overwrite the job goes on (and fails on the missing data).
    line = one_error_line(*run_cli(capsys, *argv, '--overwrite')[::2])
    assert 'no-such-data' in line and '--overwrite' not in line
    assert (earlier_run / 'pretrained' / 'best_model.npz').read_bytes() == \
        b'trained model'


def test_finetune_cli_overwrite_sets_the_config():
    args = cli.build_parser().parse_args(
        ['finetune', '--caffemodel', 'm', '--data', 'd', '--overwrite'])
    assert cli.finetune_config(args).overwrite is True
    args = cli.build_parser().parse_args(
        ['finetune', '--caffemodel', 'm', '--data', 'd'])
    assert cli.finetune_config(args).overwrite is False


def test_an_empty_or_unrelated_out_directory_is_accepted(tmp_path):
    (tmp_path / 'notes.txt').write_text('mine')
    finetune.config.check_output_dir(finetune.FinetuneConfig(
        out=str(tmp_path)))
    finetune.config.check_output_dir(finetune.FinetuneConfig(
        out=str(tmp_path / 'new')))


# --------------------------------------------------------------------------
# inspect / verify: impossible shapes, failing forwards
# --------------------------------------------------------------------------

def test_inspect_huge_input_is_refused_before_allocating(capsys,
                                                         net_files):
    start = time.perf_counter()
    line = one_error_line(*run_cli(
        capsys, 'inspect', net_files[0], '--input-shape',
        '1,3,100000,100000')[::2])
    assert time.perf_counter() - start < 30
    assert '1x3x100000x100000' in line and '30,000,000,000' in line
    assert '{:,}'.format(verify.MAX_INPUT_VALUES) in line


def test_negative_declared_dimension_is_one_line(capsys, net_files,
                                                 tmp_path):
    model, prototxt = net_files
    with open(prototxt) as f:
        text = f.read()
    assert 'dim: 2\n' in text
    bad = tmp_path / 'negative.prototxt'
    bad.write_text(text.replace('dim: 2\n', 'dim: -3\n', 1))
    line = one_error_line(*run_cli(capsys, 'inspect', model, '--prototxt',
                                   str(bad))[::2])
    assert "'data'" in line and '-3x3x9x9' in line
    assert '--input-shape' in line
    # Overriding the declared shape makes the net usable.
    code, out, err = run_cli(capsys, 'inspect', model, '--prototxt',
                             str(bad), '--input-shape', '1,3,9,9')
    assert code == 0, err


def test_inspect_forward_failure_names_the_layer(capsys, net_files):
    line = one_error_line(*run_cli(capsys, 'inspect', net_files[0],
                                   '--input-shape', '1,3,1,1')[::2])
    assert "layer 'conv1/7x7_s2' (Convolution)" in line
    assert '1x3x1x1' in line and '--input-shape' in line


def test_step_outputs_raises_input_shape_error_naming_the_layer(net_files):
    net = load_caffe(*net_files)
    with pytest.raises(InputShapeError, match="'pool1' .Pooling."), \
            chainer.using_config('train', False):
        verify.step_outputs(net, {'data': numpy.zeros((1, 3, 3, 3),
                                                      numpy.float32)})
    with pytest.raises(InputShapeError, match='dimensions cannot be'):
        verify.resolve_input_shapes(net, (1, -3, 9, 9))
    with pytest.raises(InputShapeError, match='fed to a net at most'):
        verify.resolve_input_shapes(net, (1, 3, 100000, 100000))


def test_verify_forward_failure_is_one_line(capsys, caplog, net_files):
    pytest.importorskip('cv2')
    code, out, err = run_cli(capsys, 'verify', net_files[0],
                             '--input-shape', '1,3,1,1')
    assert code == 2 and out == ''
    assert 'Traceback' not in err
    # run_verify logs its one line (on stderr outside pytest).
    [record] = [r for r in caplog.records if r.levelname == 'ERROR']
    assert record.exc_info is None
    message = record.getMessage()
    assert len(message.splitlines()) == 1
    assert "layer 'conv1/7x7_s2' (Convolution)" in message


@pytest.mark.parametrize('flag', ['--tolerance', '--detection-tolerance'])
@pytest.mark.parametrize('value', ['nan', '-1', 'much'])
def test_verify_rejects_bad_tolerances(capsys, net_files, flag, value):
    with pytest.raises(SystemExit) as e:
        cli.main(['verify', net_files[0], flag, value])
    assert e.value.code == 2
    assert 'tolerance >= 0' in capsys.readouterr().err


def test_tolerance_values_and_run_verify_checks():
    assert verify.parse_tolerance('0') == 0
    assert verify.parse_tolerance('inf') == float('inf')
    args = argparse.Namespace(model='unused', tolerance=float('nan'))
    assert verify.run_verify(args) == 2


# --------------------------------------------------------------------------
# every error one line; --debug
# --------------------------------------------------------------------------

def test_unexpected_errors_are_one_line_and_debug_shows_traceback(
        capsys, monkeypatch, net_files):
    def allocate(net, shapes):
        raise MemoryError('Unable to allocate 112. GiB')
    monkeypatch.setattr(cli, '_output_shapes', allocate)
    line = one_error_line(*run_cli(capsys, 'inspect', net_files[0])[::2])
    assert 'MemoryError: Unable to allocate 112. GiB' in line
    assert '--debug' in line
    for argv in (['--debug', 'inspect', net_files[0]],
                 ['inspect', net_files[0], '--debug']):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2
        assert 'Traceback' in err and 'in allocate' in err
        assert err.strip().splitlines()[-1] == \
            'chainer-finetune: error: MemoryError: Unable to allocate 112. GiB'


def test_python_m_prints_no_traceback_for_a_huge_shape(net_files):
    proc = subprocess.run(
        [sys.executable, '-m', 'chainer_finetune', 'inspect', net_files[0],
         '--input-shape', '1,3,100000,100000'],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# --------------------------------------------------------------------------
# convert on a full disk
# --------------------------------------------------------------------------

@pytest.mark.parametrize('suffix', ['.npz', '.pkl'])
def test_convert_full_disk_names_the_file(capsys, monkeypatch, net_files,
                                          tmp_path, suffix):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if suffix == '.npz':
        monkeypatch.setattr(weight_files, 'save_weights', full)
    else:
        from chainer_finetune.caffe import cache
        monkeypatch.setattr(cache, 'save_pickle', full)
    output = str(tmp_path / ('out' + suffix))
    line = one_error_line(*run_cli(capsys, 'convert', net_files[0], '-o',
                                   output)[::2])
    assert line == 'chainer-finetune: error: {}: cannot write: {}'.format(
        output, os.strerror(errno.ENOSPC))
