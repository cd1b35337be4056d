"""tests/gpu_check.py: a broken CuPy fails the run when a GPU is required.

A broken CuPy install used to make every GPU test skip quietly, the same as
a machine without a GPU. These tests put a real broken ``cupy`` package on
``sys.path`` of a child interpreter (its ``__init__`` imports a compiled
core that is missing, as after an interrupted or mismatched install) and
check both sides: without ``CHAINER_FINETUNE_REQUIRE_GPU`` the GPU tests
skip with the import error as the reason; with it set to 1 the check raises
and pytest reports an error, exit status non-zero.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from gpu_check import REQUIRE_GPU_VARIABLE
from gpu_check import gpu_required

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent

BROKEN_CUPY_INIT = textwrap.dedent('''\
    """A CuPy install whose compiled core is missing."""
    __version__ = '13.3.0'
    import cupy._core  # noqa: F401  (no such module: the break)
    ''')


@pytest.fixture
def broken_cupy(tmp_path):
    """A directory holding the broken ``cupy`` package."""
    package = tmp_path / 'site' / 'cupy'
    package.mkdir(parents=True)
    (package / '__init__.py').write_text(BROKEN_CUPY_INIT)
    return package.parent


def _run(args, site, require, timeout=300):
    env = dict(os.environ)
    env.pop(REQUIRE_GPU_VARIABLE, None)
    if require is not None:
        env[REQUIRE_GPU_VARIABLE] = require
    env['PYTHONPATH'] = os.pathsep.join([str(site), str(ROOT), str(TESTS)])
    return subprocess.run([sys.executable] + args, cwd=str(ROOT), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=timeout)


_PROBE = ('import chainer_finetune, gpu_check, cupy; '
          'print(gpu_check.gpu_unusable_reason())')


def test_the_fake_package_is_really_broken(broken_cupy):
    done = _run(['-c', 'import cupy'], broken_cupy, None)
    assert done.returncode == 1
    assert "No module named 'cupy._core'" in done.stdout


def test_broken_cupy_is_a_skip_reason_without_the_variable(broken_cupy):
    probe = _PROBE.replace(', cupy;', ';')
    done = _run(['-c', probe], broken_cupy, None)
    assert done.returncode == 0, done.stdout
    assert 'CuPy is not usable by Chainer' in done.stdout
    assert 'cupy._core' in done.stdout


@pytest.mark.parametrize('value', ['1', 'yes'])
def test_broken_cupy_raises_when_the_gpu_is_required(broken_cupy, value):
    probe = _PROBE.replace(', cupy;', ';')
    done = _run(['-c', probe], broken_cupy, value)
    assert done.returncode == 1, done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith('gpu_check.GpuRequiredError: '
                           'CHAINER_FINETUNE_REQUIRE_GPU={} but the GPU '
                           'tests cannot run: CuPy is not usable by '
                           'Chainer'.format(value)), last
    assert 'cupy._core' in last


def test_gpu_tests_skip_without_the_variable(broken_cupy):
    done = _run(['-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-rs',
                 'tests/test_gpu.py'], broken_cupy, '0')
    assert done.returncode == 0, done.stdout
    assert ' skipped' in done.stdout and 'failed' not in done.stdout
    assert 'cupy._core' in done.stdout


def test_gpu_tests_fail_with_the_variable(broken_cupy):
    done = _run(['-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                 'tests/test_gpu.py'], broken_cupy, '1')
    assert done.returncode not in (0, 5), done.stdout   # 5: none collected
    assert 'GpuRequiredError' in done.stdout
    assert ' skipped' not in done.stdout


@pytest.mark.parametrize('value,required', [
    (None, False), ('', False), ('0', False), (' 0 ', False), ('1', True),
    ('true', True)])
def test_gpu_required_reads_the_variable(monkeypatch, value, required):
    if value is None:
        monkeypatch.delenv(REQUIRE_GPU_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_GPU_VARIABLE, value)
    assert gpu_required() is required
