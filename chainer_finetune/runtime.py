"""What this process runs on: versions, backends, GPU, compat patches."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Dict, List, Optional, Tuple

import chainer
import numpy

from chainer_finetune import _compat
from chainer_finetune._version import __version__


def _cupy() -> Tuple[Optional[str], bool, str]:
    """CuPy's version, whether Chainer can use a GPU, and why (not)."""
    from chainer.backends import cuda
    try:
        import cupy
    except ImportError:
        return None, False, 'CuPy is not installed'
    except Exception as e:  # CuPy raises various errors without CUDA
        return None, False, 'CuPy failed to import: {}'.format(e)
    if not cuda.available:
        return None, False, 'Chainer cannot use CuPy: {}'.format(
            getattr(cuda, '_resolution_error', 'unknown reason'))
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # cudaErrorNoDevice, driver missing, ...
        return cupy.__version__, False, 'no usable GPU: {}'.format(e)
    if count == 0:
        return cupy.__version__, False, 'no GPU found'
    name = cupy.cuda.runtime.getDeviceProperties(0)['name']
    if isinstance(name, bytes):
        name = name.decode()
    return cupy.__version__, True, '{} GPU(s), device 0: {}; cuDNN {}'.format(
        count, name, 'enabled' if cuda.cudnn_enabled else 'not used')


def runtime_info() -> Dict[str, object]:
    """Collects what ``chainer-finetune info`` prints.

    Returns:
        dict: Versions of chainer_finetune, Python, Chainer, NumPy, protobuf
        (with its backend: ``upb``, ``cpp`` or ``python``), h5py and CuPy,
        whether a GPU is usable, and the compatibility patches applied.
    """
    import google.protobuf
    from google.protobuf.internal import api_implementation
    cupy_version, gpu, gpu_detail = _cupy()
    try:
        h5py_version: Optional[str] = importlib.metadata.version('h5py')
    except importlib.metadata.PackageNotFoundError:
        h5py_version = None
    return {
        'chainer_finetune': __version__,
        'python': platform.python_version(),
        'chainer': chainer.__version__,
        'numpy': numpy.__version__,
        'protobuf': google.protobuf.__version__,
        'protobuf_backend': api_implementation.Type(),
        'h5py': h5py_version,
        'cupy': cupy_version,
        'gpu': gpu,
        'gpu_detail': gpu_detail,
        'compat_patches': list(_compat.APPLIED),
    }


def format_runtime_info(info: Dict[str, object]) -> str:
    """Renders :func:`runtime_info` as aligned ``name: value`` lines."""
    patches: List[str] = info['compat_patches']  # type: ignore[assignment]
    rows = [
        ('chainer_finetune', info['chainer_finetune']),
        ('Python', info['python']),
        ('Chainer', info['chainer']),
        ('NumPy', info['numpy']),
        ('protobuf', '{} (backend: {})'.format(info['protobuf'],
                                               info['protobuf_backend'])),
        ('h5py', info['h5py'] or 'not installed'),
        ('CuPy', info['cupy'] or 'not available'),
        ('GPU usable', '{} ({})'.format('yes' if info['gpu'] else 'no',
                                        info['gpu_detail'])),
        ('compat patches', len(patches)),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ['{}: {}'.format(k.ljust(width), v) for k, v in rows]
    lines += ['  - ' + p for p in patches]
    return '\n'.join(lines)
