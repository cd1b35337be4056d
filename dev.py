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
import time
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, '.venv')
CONSTRAINTS = os.path.join(ROOT, 'constraints', 'build.txt')
STAMP = os.path.join(VENV, '.chainer_finetune-installed')
# pip's whole output; the terminal gets one line per phase.
SETUP_LOG = os.path.join(VENV, 'setup.log')
# Shown when a phase fails: the log's last lines hold pip's error.
LOG_TAIL_LINES = 25
RETRY = 'python3 dev.py setup'
# What the first set-up downloads and how long it takes, for the one line
# that starts it (measured on 2 cores, see README).
FIRST_SETUP = ('first set-up: about 160 MB of wheels (NumPy, OpenCV, '
               'onnxruntime, matplotlib, Chainer, ...), about a minute')
# What decides the venv's content; a change to any of these reinstalls.
PACKAGING_FILES = ('setup.py', 'pyproject.toml', 'constraints/build.txt',
                   'dev.py')
# The tox environments of a full test run, in order (see tox.ini): the
# suite under NumPy 2.x and 1.26, their comparison, then the Sphinx docs
# built with warnings as errors.
TEST_ENVS = 'np2,np1,parity,docs'
# Installed with --no-deps (its metadata pins chainer<7, onnx<1.7).
ONNX_CHAINER = 'onnx-chainer==1.6.0'


def _say(message, file=None):
    print('[dev.py] ' + message, file=file or sys.stdout, flush=True)


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


def _log_tail(text, lines=LOG_TAIL_LINES):
    """The last ``lines`` lines of ``text`` that say something (pip's
    notes about ignored index locations left out)."""
    kept = [line for line in text.splitlines()
            if line.strip() and 'is ignored: it is neither' not in line]
    return kept[-lines:]


def phase(title, cmd, log_path=SETUP_LOG, **kwargs):
    """Runs ``cmd`` with its output appended to ``log_path``; says one line
    before and one after (with the time taken). On failure prints the
    log's last lines and the command to retry, and exits with pip's code.
    """
    _say(title + ' ...')
    start = time.monotonic()
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, 'a') as log:
        log.write('\n$ {}\n'.format(' '.join(cmd)))
        log.flush()
        begin = log.tell()
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                              **kwargs).returncode
    if code != 0:
        with open(log_path) as log:
            log.seek(begin)
            tail = _log_tail(log.read())
        for line in tail:
            print('    ' + line, file=sys.stderr)
        _say('{} failed (exit code {}); the whole log is {}; to retry: '
             '{}'.format(title, code, log_path, RETRY), file=sys.stderr)
        sys.exit(code)
    _say('{}: done in {:.0f} s'.format(title, time.monotonic() - start))


def setup(quiet_when_ready=True):
    """Creates .venv if needed and installs the package with test extras.

    pip's output goes to .venv/setup.log; a venv that is up to date says
    so in one line (none with ``quiet_when_ready=False``).
    """
    if sys.version_info < (3, 10):
        sys.exit('chainer_finetune needs Python >= 3.10; this is {}'.format(
            sys.version.split()[0]))
    python = _venv_python()
    pip = [python, '-m', 'pip']
    first = not os.path.exists(python)
    if first:
        _say('creating {} ({})'.format(VENV, FIRST_SETUP))
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
                if quiet_when_ready:
                    _say('.venv is up to date')
                return python
    phase('installing chainer_finetune and its test extras into .venv'
          if first else 'updating .venv (packaging files changed)',
          pip + ['install', '-e', ROOT + '[test,onnx]'], env=_pip_env(),
          cwd=ROOT)
    # ONNX export's exporter; its metadata pins chainer<7 (docs/deploy.rst).
    phase('installing onnx-chainer (without its dependencies)',
          pip + ['install', '--no-deps', ONNX_CHAINER], env=_pip_env(),
          cwd=ROOT)
    with open(STAMP, 'w') as f:
        f.write(digest + '\n')
    return python


def run(argv):
    """Runs a command with .venv/bin first on PATH."""
    setup(quiet_when_ready=False)
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
