"""``import chainer`` before ``import chainer_finetune`` (issue 11).

The package is built into a wheel and installed with
``pip install --no-deps --target DIR``, and installed editable the same
way; each check runs a fresh interpreter with ``-S`` (no site-packages
processing), this interpreter's site-packages on ``PYTHONPATH`` (Chainer,
NumPy) and ``site.addsitedir(DIR)``, which processes DIR's .pth files the
way site does for site-packages at start-up. Runs under NumPy 2 and 1.26
(tox np2 and np1). Marked ``network``: pip builds in an isolated
environment, fetching setuptools < 82 (constraints/build.txt).
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy
import pytest

pytestmark = [pytest.mark.network, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSTRAINTS = os.path.join(ROOT, 'constraints', 'build.txt')
SOURCES = ('setup.py', 'pyproject.toml', 'README.md',
           '_chainer_finetune_hook.py', 'chainer_finetune')
PTH = 'chainer_finetune-import-hook.pth'
DISABLE = 'CHAINER_FINETUNE_NO_IMPORT_HOOK'
NUMPY2 = int(numpy.__version__.split('.')[0]) >= 2
# Patches for names NumPy 2 removed or changed (chainer_finetune._compat).
NUMPY2_PATCHES = ('numpy.sctypes', 'numpy.meshgrid')
INSTALLS = ('wheel_site', 'editable_site')


def _pip(*args: str) -> None:
    env = dict(os.environ, PIP_CONSTRAINT=CONSTRAINTS,
               PIP_BUILD_CONSTRAINT=CONSTRAINTS,
               PIP_DISABLE_PIP_VERSION_CHECK='1')
    done = subprocess.run([sys.executable, '-m', 'pip', *args], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        pytest.fail('pip {} failed:\n{}'.format(' '.join(args),
                                                done.stdout + done.stderr))


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """A copy of the sources (pip writes build/ and egg-info into them)."""
    root = tmp_path_factory.mktemp('source')
    for name in SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, root / name, ignore=shutil.ignore_patterns(
                '__pycache__', '*.egg-info'))
        else:
            shutil.copy(path, root / name)
    return root


@pytest.fixture(scope='module')
def wheel_site(source, tmp_path_factory):
    wheels = tmp_path_factory.mktemp('wheels')
    _pip('wheel', '--no-deps', '-w', str(wheels), str(source))
    (wheel,) = wheels.glob('chainer_finetune-*.whl')
    site = tmp_path_factory.mktemp('wheel_site')
    _pip('install', '--no-deps', '--target', str(site), str(wheel))
    return site, site


@pytest.fixture(scope='module')
def editable_site(source, tmp_path_factory):
    site = tmp_path_factory.mktemp('editable_site')
    _pip('install', '--no-deps', '--target', str(site), '-e', str(source))
    return site, source


@pytest.fixture(params=INSTALLS)
def install(request):
    """(directory whose .pth files run, where chainer_finetune is)."""
    return request.getfixturevalue(request.param)


def _python(site, code, disable=None, importtime=False):
    """Run ``code`` in a fresh interpreter after site.addsitedir(site).

    DIR goes first on sys.path so that its editable finder module wins over
    one of the same name in this interpreter's site-packages.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', DISABLE)}
    env['PYTHONPATH'] = sysconfig.get_paths()['purelib']
    if disable is not None:
        env[DISABLE] = disable
    prelude = ('import site, sys; sys.path.insert(0, {0!r}); '
               'site.addsitedir({0!r})\n'.format(str(site)))
    command = [sys.executable, '-S'] + (['-X', 'importtime'] if importtime
                                         else []) + ['-c', prelude + code]
    # cwd: -c puts it first on sys.path, where it must not shadow site.
    return subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=300, cwd=str(site))


def _json(done):
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


REPORT = '''
import json
print(json.dumps({
    'finders': [type(f).__name__ for f in sys.meta_path],
    'modules': sorted(m for m in ('chainer', 'chainer_finetune', 'numpy',
                                  '_chainer_finetune_hook')
                      if m in sys.modules),
}))
'''


def test_installs_carry_the_pth_file(install):
    site, _ = install
    with open(os.path.join(site, PTH), encoding='utf-8') as f:
        lines = f.read().splitlines()
    # site exec()s a .pth line that starts with "import"; one line only.
    assert lines == ['import _chainer_finetune_hook; '
                     '_chainer_finetune_hook.install()']


def test_start_up_only_installs_the_finder(install):
    site, _ = install
    done = _python(site, 'import json\nprint(json.dumps(['
                   'type(f).__name__ for f in sys.meta_path]))',
                   importtime=True)
    assert done.returncode == 0, done.stderr
    assert 'ChainerImportFinder' in json.loads(done.stdout)
    imported = {line.rsplit('|', 1)[-1].strip()
                for line in done.stderr.splitlines()
                if line.startswith('import time:')}
    assert '_chainer_finetune_hook' in imported
    assert not {'numpy', 'chainer', 'chainer_finetune'} & imported
    assert not any(name.startswith(('numpy.', 'chainer')) for name in imported)


@pytest.mark.parametrize('first', ['import chainer',
                                   'import chainer.functions as F'])
def test_import_chainer_first_works(install, first):
    site, home = install
    code = first + '''
import json, numpy, chainer
import chainer.functions as F
x = chainer.Variable(numpy.arange(6, dtype=numpy.float32).reshape(2, 3))
F.sum(F.as_strided(x, (2, 2), (3, 1)) ** 2).backward()
import chainer_finetune
from chainer_finetune import _compat
print(json.dumps({
    'applied': _compat.APPLIED,
    'package': chainer_finetune.__file__,
    'grad': x.grad.tolist(),
    'numpy_sctypes_added': 'sctypes' in vars(numpy) and
                           int(numpy.__version__.split('.')[0]) >= 2,
    'finders': [type(f).__name__ for f in sys.meta_path],
}))
'''
    report = _json(_python(site, code))
    assert report['package'].startswith(str(home))
    assert report['grad'] == [[0.0, 2.0, 0.0], [6.0, 8.0, 0.0]]
    assert not report['numpy_sctypes_added']  # NumPy itself is untouched
    assert 'ChainerImportFinder' not in report['finders']  # one shot
    numpy2_patches = [name for name in report['applied']
                      if any(n in name for n in NUMPY2_PATCHES)]
    if NUMPY2:
        assert len(numpy2_patches) == 2, report['applied']
    else:  # NumPy 1.26: nothing of NumPy 2's is patched
        assert numpy2_patches == []


def test_nothing_happens_without_chainer(install):
    site, _ = install
    report = _json(_python(site, 'import json, os, logging' + REPORT))
    assert report['modules'] == ['_chainer_finetune_hook']
    assert 'ChainerImportFinder' in report['finders']


@pytest.mark.parametrize('value', ['1', 'yes'])
def test_environment_variable_turns_the_hook_off(install, value):
    site, _ = install
    code = '''
try:
    import chainer
except Exception as error:
    failed = type(error).__name__
else:
    failed = None
''' + REPORT.replace("'finders'", "'failed': failed, 'finders'")
    report = _json(_python(site, code, disable=value))
    assert 'ChainerImportFinder' not in report['finders']
    assert 'chainer_finetune' not in report['modules']
    if NUMPY2:  # Chainer's own failure: numpy.sctypes
        assert report['failed'] == 'AttributeError'


def test_zero_keeps_the_hook_on(install):
    site, _ = install
    report = _json(_python(site, 'import chainer' + REPORT, disable='0'))
    assert 'chainer_finetune' in report['modules']


def test_broken_package_falls_back_to_plain_chainer(install, tmp_path):
    site, _ = install
    broken = tmp_path / 'chainer_finetune'
    broken.mkdir()
    (broken / '__init__.py').write_text('raise ImportError("broken here")\n')
    code = '''
sys.path.insert(0, {!r})
import warnings
warnings.simplefilter('always')
try:
    import chainer
except AttributeError:  # NumPy 2 without the patches: Chainer's own error
    pass
'''.format(str(tmp_path))
    done = _python(site, code)
    assert done.returncode == 0, done.stderr
    assert 'RuntimeWarning' in done.stderr
    assert 'ImportError: broken here' in done.stderr
    assert DISABLE in done.stderr
