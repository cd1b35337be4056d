"""The compatibility layer: what it patches, and only when it must."""

import json
import os
import subprocess
import sys
import warnings

import numpy
import pytest

import chainer_finetune
from chainer_finetune import _compat

NUMPY2 = int(numpy.__version__.split('.')[0]) >= 2


def _run(code):
    # Without the import hook of an installed package (docs/compat.rst):
    # these processes test Chainer's import on its own.
    env = dict(os.environ, CHAINER_FINETUNE_NO_IMPORT_HOOK='1')
    return subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=120, env=env)


def _environment_check_imports_work():
    # What chainer/_environment_check.py imports, tried in a clean process.
    return _run('import numpy.distutils.system_info, '
                'pkg_resources').returncode == 0


def test_plain_chainer_import_fails_exactly_where_patched():
    # Without chainer_finetune, Chainer 7.8.1 fails on NumPy 2 (that is why
    # the layer exists), and on NumPy 1.x exactly when the environment
    # check's imports fail (setuptools >= 80 breaks numpy.distutils).
    proc = _run('import chainer')
    if NUMPY2:
        assert proc.returncode != 0
        assert 'sctypes' in proc.stderr or 'distutils' in proc.stderr
    elif _environment_check_imports_work():
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0
        assert 'distutils' in proc.stderr or 'pkg_resources' in proc.stderr


def test_import_order_numpy_version_printed():
    proc = _run('import chainer_finetune, chainer, numpy; '
                'print(numpy.__version__)')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == numpy.__version__


def test_patches_match_stack():
    applied = set(_compat.APPLIED)
    sctypes = 'numpy.sctypes for chainer.functions.array.as_strided'
    meshgrid = ('list-returning numpy.meshgrid for '
                'chainer.distributions.categorical')
    env = 'chainer._environment_check without numpy.distutils/pkg_resources'
    assert (sctypes in applied) == NUMPY2
    assert (meshgrid in applied) == NUMPY2
    distutils_ok = _environment_check_imports_work()
    assert (env in applied) == (not distutils_ok)
    assert ('caffe_pb2 for chainer.links.caffe from chainer_finetune.caffe'
            in applied)
    # A bug in Chainer 7.8.1 itself, on every stack; tested by running it,
    # and the test passes once the patch is in.
    assert 'shapes for Deconvolution2DFunction._set_cover_all' in applied
    assert not _compat._deconvolution_backward_fails()
    # Applying again is a no-op.
    assert _compat.apply() == _compat.APPLIED


def test_numpy_itself_is_not_modified():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert hasattr(numpy, 'sctypes') == (not NUMPY2)
    assert 'float' not in vars(numpy) or numpy.float is float
    assert isinstance(numpy.meshgrid([0], [0]), tuple if NUMPY2 else list)


def test_numpy_view_delegates_and_overrides():
    view = _compat._NumpyView({'float': float})
    assert view.float is float
    assert view.float32 is numpy.float32
    assert view.ndarray is numpy.ndarray
    with pytest.raises(AttributeError):
        view.no_such_name_in_numpy


def test_patched_function_keeps_module_identity():
    # resize_images tests `xp is numpy` in the module; only
    # compute_indices_and_weights sees the view, so the CPU path is taken.
    from chainer.functions.array import resize_images as mod
    assert mod.numpy is numpy
    if 'numpy.float for chainer.functions.array.resize_images' in \
            _compat.APPLIED:
        func_numpy = mod.compute_indices_and_weights.__globals__['numpy']
        assert isinstance(func_numpy, _compat._NumpyView)
        assert func_numpy.float is float


def test_environment_check_stand_in_warns_on_two_cupy(monkeypatch):
    installed = {'cupy-cuda12x': '13.6.0', 'cupy-cuda13x': '14.0.1'}

    def version(name):
        if name in installed:
            return installed[name]
        raise _compat.importlib.metadata.PackageNotFoundError(name)

    module = _compat._environment_check_module()
    monkeypatch.setattr(_compat.importlib.metadata, 'version', version)
    with pytest.warns(UserWarning, match='cupy-cuda12x, cupy-cuda13x'):
        module.check()
    installed.pop('cupy-cuda13x')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        module.check()


def test_cli_info_json():
    proc = subprocess.run(
        [sys.executable, '-m', 'chainer_finetune.cli', 'info', '--json'],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    import chainer
    import google.protobuf
    assert info['chainer_finetune'] == chainer_finetune.__version__
    assert info['chainer'] == chainer.__version__ == '7.8.1'
    assert info['numpy'] == numpy.__version__
    assert info['protobuf'] == google.protobuf.__version__
    assert info['protobuf_backend'] in ('upb', 'cpp')
    assert info['compat_patches'] == _compat.APPLIED
    assert isinstance(info['gpu'], bool)


def test_cli_info_text():
    proc = subprocess.run(
        [sys.executable, '-m', 'chainer_finetune.cli', 'info'],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith('chainer_finetune')
    assert any(line.startswith('NumPy') and numpy.__version__ in line
               for line in lines)
    for patch in _compat.APPLIED:
        assert '  - ' + patch in lines


def test_root_logger_level_survives_import():
    # numpy.distutils, imported on Chainer's import, resets the root level.
    proc = _run('import logging; logging.basicConfig(level=logging.DEBUG); '
                'import chainer_finetune; '
                'print(logging.getLogger().level)')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == str(10)
