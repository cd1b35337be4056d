"""Whether the MPI tests can run here: one check for every test module.

The [mpi] extra (mpi4py and MPICH, installed by tox) puts ``mpiexec`` next
to the Python executable; without it the MPI tests skip with the reason.
"""

import os
import shutil
import subprocess
import sys
from typing import List, Optional

import pytest

#: The launcher next to this Python (the [mpi] extra's), else on PATH.
MPIEXEC = shutil.which('mpiexec', path=os.path.dirname(sys.executable)) or \
    shutil.which('mpiexec')

#: The repository root (put on the launched processes' PYTHONPATH).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mpi_missing() -> Optional[str]:
    """Why the MPI tests cannot run here, or None when they can."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return 'mpi4py is not installed (pip install "chainer_finetune[mpi]")'
    if MPIEXEC is None:
        return 'no mpiexec next to {} or on PATH'.format(sys.executable)
    return None


#: Marks a test that starts ``mpiexec``; skips it with the reason.
needs_mpi = pytest.mark.skipif(mpi_missing() is not None,
                               reason=str(mpi_missing()))


def env(cache: str) -> dict:
    """The environment of a launched job: this checkout first on the path,
    a private cache of converted nets."""
    values = dict(os.environ)
    values['PYTHONPATH'] = ROOT + os.pathsep + values.get('PYTHONPATH', '')
    values['CHAINER_FINETUNE_CACHE'] = cache
    return values


def launch(args: List[str], cache: str, processes: Optional[int] = None,
           timeout: float = 300, extra_env: Optional[dict] = None
           ) -> subprocess.CompletedProcess:
    """Runs ``python ARGS`` (under ``mpiexec -n processes`` when given) and
    returns it, whatever its exit status; ``extra_env`` is added to its
    environment."""
    cmd = [sys.executable] + list(args)
    if processes:
        cmd = [MPIEXEC, '-n', str(processes)] + cmd
    return subprocess.run(cmd, env=dict(env(cache), **(extra_env or {})),
                          capture_output=True, text=True, timeout=timeout)
