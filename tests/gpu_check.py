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


def cpu_and_gpu_devices() -> list:
    """``['@numpy', '@cupy:0']`` for ``pytest.mark.parametrize``; the GPU
    marked ``gpu`` and skipped with the reason where it cannot run."""
    import pytest
    reason = gpu_unusable_reason()
    return ['@numpy', pytest.param('@cupy:0', marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(reason is not None, reason=str(reason))])]


def to_numpy(x):
    """A NumPy copy of an array (or a Variable's array) on any device."""
    import chainer
    import numpy
    if isinstance(x, chainer.Variable):
        x = x.array
    return numpy.array(chainer.backend.CpuDevice().send(x), copy=True)


def assert_close(actual, expected, rtol: float, what: str = '') -> None:
    """Same shape and dtype; values within ``rtol`` relative, and ``rtol``
    times the largest expected magnitude (at least 1e-3) absolute."""
    import numpy
    actual, expected = to_numpy(actual), to_numpy(expected)
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    scale = max(float(numpy.abs(expected).max(initial=0.0)), 1e-3)
    numpy.testing.assert_allclose(actual, expected, rtol=rtol,
                                  atol=rtol * scale, err_msg=what)
