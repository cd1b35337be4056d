"""dev.py's set-up output (issue 15): one line per phase, pip's log kept in
a file, and on failure the failing part of the log and the retry command.

The failure is real: pip asked for a package that no index holds.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def dev():
    spec = importlib.util.spec_from_file_location(
        'dev_script', os.path.join(ROOT, 'dev.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_phase_says_two_lines_and_logs_the_rest(dev, tmp_path, capsys):
    log = tmp_path / 'venv' / 'setup.log'
    chatter = 'import sys; [print("line", i) for i in range(200)]'
    dev.phase('talking', [sys.executable, '-c', chatter], log_path=str(log))
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert len(lines) == 2 and out.err == ''
    assert lines[0] == '[dev.py] talking ...'
    assert lines[1].startswith('[dev.py] talking: done in ')
    logged = log.read_text()
    assert 'line 0\n' in logged and 'line 199\n' in logged


def test_a_failing_install_shows_the_log_tail_and_the_retry(dev, tmp_path,
                                                           capsys):
    log = tmp_path / 'setup.log'
    log.write_text('an earlier phase\n')
    cmd = [sys.executable, '-m', 'pip', 'install', '--no-deps',
           '--no-index', '--find-links', str(tmp_path),
           'no-such-package-for-chainer-finetune']
    with pytest.raises(SystemExit) as exit_info:
        dev.phase('installing', cmd, log_path=str(log))
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert 'No matching distribution found for ' \
        'no-such-package-for-chainer-finetune' in err
    assert 'to retry: python3 dev.py setup' in err
    assert str(log) in err
    # Only this phase's part of the log, and not all of it.
    assert 'an earlier phase' not in err
    assert len(err.splitlines()) <= dev.LOG_TAIL_LINES + 1
    assert 'an earlier phase' in log.read_text()


def test_an_up_to_date_venv_says_one_line():
    # The development venv exists (the suite runs in it or beside it).
    if not os.path.exists(os.path.join(ROOT, '.venv',
                                       '.chainer_finetune-installed')):
        pytest.skip('no .venv made by dev.py here (tox runs elsewhere)')
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'dev.py'),
                           'setup'], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    if 'up to date' not in done.stdout:
        pytest.skip('the venv was out of date: it was updated instead')
    assert done.stdout.splitlines() == ['[dev.py] .venv is up to date']
