#!/usr/bin/env python3
"""Set up the project's virtual environment and run things in it.

    python3 dev.py run CMD [ARGS...]   run CMD inside .venv (e.g. chainer-finetune info)
    python3 dev.py test [PYTEST ARGS]  the tests (NumPy 1.26 and 2.x) and the
                                       docs, warnings as errors (tox)
    python3 dev.py setup               only create/update .venv

Every command first makes sure ``.venv/`` exists and holds this package
with its test and onnx extras (editable) and onnx-chainer (--no-deps), reinstalling only when the packaging files
changed. Chainer 7.8.1 builds from an sdist that needs setuptools < 82, so
every pip call gets constraints/build.txt as PIP_CONSTRAINT (pip <= 26.1)
and PIP_BUILD_CONSTRAINT (pip >= 26.2). Needs only Python >= 3.10 with pip.
"""

import hashlib
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, '.venv')
CONSTRAINTS = os.path.join(ROOT, 'constraints', 'build.txt')
STAMP = os.path.join(VENV, '.chainer_finetune-installed')
# What decides the venv's content; a change to any of these reinstalls.
PACKAGING_FILES = ('setup.py', 'pyproject.toml', 'constraints/build.txt',
                   'dev.py')
# The tox environments of a full test run, in order (see tox.ini): the
# suite under NumPy 2.x and 1.26, their comparison, then the Sphinx docs
# built with warnings as errors.
TEST_ENVS = 'np2,np1,parity,docs'
# Installed with --no-deps (its metadata pins chainer<7, onnx<1.7).
ONNX_CHAINER = 'onnx-chainer==1.6.0'


def _say(message):
    print('[dev.py] ' + message, flush=True)


def _venv_python():
    if os.name == 'nt':
        return os.path.join(VENV, 'Scripts', 'python.exe')
    return os.path.join(VENV, 'bin', 'python')


def _pip_env():
    env = dict(os.environ)
    env['PIP_CONSTRAINT'] = CONSTRAINTS
    env['PIP_BUILD_CONSTRAINT'] = CONSTRAINTS
    env.setdefault('PIP_DISABLE_PIP_VERSION_CHECK', '1')
    return env


def _packaging_digest():
    digest = hashlib.sha256(sys.version.encode())
    for name in PACKAGING_FILES:
        with open(os.path.join(ROOT, name), 'rb') as f:
            digest.update(name.encode() + b'\0' + f.read())
    return digest.hexdigest()


def _check(cmd, **kwargs):
    _say('$ ' + ' '.join(cmd))
    subprocess.run(cmd, check=True, **kwargs)


def setup():
    """Creates .venv if needed and installs the package with test extras."""
    if sys.version_info < (3, 10):
        sys.exit('chainer_finetune needs Python >= 3.10; this is {}'.format(
            sys.version.split()[0]))
    python = _venv_python()
    pip = [python, '-m', 'pip']
    if not os.path.exists(python):
        _say('creating ' + VENV)
        try:
            venv.create(VENV, with_pip=True)
        except subprocess.CalledProcessError:
            # Python without ensurepip (e.g. Debian without python3-venv):
            # drive the venv with this interpreter's pip instead.
            venv.create(VENV, with_pip=False, clear=True)
    if subprocess.run([python, '-m', 'pip', '--version'],
                      capture_output=True).returncode != 0:
        pip = [sys.executable, '-m', 'pip', '--python', python]
    digest = _packaging_digest()
    if os.path.exists(STAMP):
        with open(STAMP) as f:
            if f.read().strip() == digest:
                return python
    _check(pip + ['install', '-e', ROOT + '[test,onnx]'], env=_pip_env(),
           cwd=ROOT)
    # ONNX export's exporter; its metadata pins chainer<7 (docs/deploy.rst).
    _check(pip + ['install', '--no-deps', ONNX_CHAINER], env=_pip_env(),
           cwd=ROOT)
    with open(STAMP, 'w') as f:
        f.write(digest + '\n')
    return python


def run(argv):
    """Runs a command with .venv/bin first on PATH."""
    setup()
    if not argv:
        sys.exit('usage: python3 dev.py run CMD [ARGS...]')
    env = _pip_env()
    env['VIRTUAL_ENV'] = VENV
    env['PATH'] = os.path.dirname(_venv_python()) + os.pathsep + env['PATH']
    return subprocess.run(argv, env=env, cwd=ROOT).returncode


def test(pytest_args):
    """Runs the suite under NumPy 2.x and 1.26, compares them, builds docs."""
    python = setup()
    cmd = [python, '-m', 'tox', 'run', '-e', TEST_ENVS]
    if pytest_args and pytest_args[0] == '--':
        pytest_args = pytest_args[1:]
    if pytest_args:
        cmd += ['--'] + list(pytest_args)
    _say('$ ' + ' '.join(cmd))
    return subprocess.run(cmd, env=_pip_env(), cwd=ROOT).returncode


def main(argv):
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == 'setup':
        setup()
        return 0
    if command == 'run':
        return run(rest)
    if command == 'test':
        return test(rest)
    print(__doc__)
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
