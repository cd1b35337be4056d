"""Whether the GPU tests can run here: one check for every test module.

Written in the tests rather than taken from ``chainer_finetune.runtime`` so
that a wrong answer from the library cannot make GPU tests skip silently.
"""

from typing import Optional


def gpu_unusable_reason() -> Optional[str]:
    """Why the GPU tests cannot run here, or None when they can."""
    try:
        from chainer.backends import cuda
    except Exception as e:  # pragma: no cover - chainer itself is broken
        return 'chainer.backends.cuda failed to import: {!r}'.format(e)
    if not cuda.available:
        return 'CuPy is not usable by Chainer: {!r}'.format(
            getattr(cuda, '_resolution_error', 'unknown reason'))
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, insufficient driver, no device, ...
        return 'no usable CUDA GPU: {}: {}'.format(type(e).__name__, e)
    if count < 1:
        return 'no CUDA GPU found'
    return None
