"""Whether the GPU tests can run here: one check for every test module.

Written in the tests rather than taken from ``chainer_finetune.runtime`` so
that a wrong answer from the library cannot make GPU tests skip silently.

Without a GPU the GPU tests skip with the reason. Where a GPU is expected
(a GPU CI job), set ``CHAINER_FINETUNE_REQUIRE_GPU=1``: then any reason to
skip, a broken CuPy install above all, is an error that fails the run
instead of a quiet skip.
"""

import os
from typing import Optional

REQUIRE_GPU_VARIABLE = 'CHAINER_FINETUNE_REQUIRE_GPU'


class GpuRequiredError(RuntimeError):
    """The GPU tests cannot run although ``CHAINER_FINETUNE_REQUIRE_GPU=1``."""


def gpu_required() -> bool:
    """Whether the environment asks for the GPU tests to run, not skip."""
    return os.environ.get(REQUIRE_GPU_VARIABLE, '').strip() not in (
        '', '0')


def _reason() -> Optional[str]:
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


def gpu_unusable_reason() -> Optional[str]:
    """Why the GPU tests cannot run here, or None when they can.

    Raises:
        GpuRequiredError: There is a reason and
            ``CHAINER_FINETUNE_REQUIRE_GPU`` is set (to anything but ``0``).
    """
    reason = _reason()
    if reason is not None and gpu_required():
        raise GpuRequiredError('{}={} but the GPU tests cannot run: {}'.format(
            REQUIRE_GPU_VARIABLE, os.environ[REQUIRE_GPU_VARIABLE], reason))
    return reason
