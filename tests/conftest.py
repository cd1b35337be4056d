"""Shared test setup.

``chainer_finetune`` is imported before anything else so that every test
module's ``import chainer`` gets Chainer with the compatibility patches
(Chainer 7.8.1 does not import under NumPy 2 without them).
"""

import chainer_finetune  # noqa: F401  (must precede `import chainer`)

import chainer  # noqa: E402
import numpy  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def seeded():
    """Seed NumPy's global RNG (Chainer's initializers and F.dropout draw
    from it) and return a separate RandomState for test data."""
    numpy.random.seed(0)
    return numpy.random.RandomState(1234)


@pytest.fixture(autouse=True)
def _default_chainer_config():
    # A test that fails inside `using_config` must not leak train=False etc.
    with chainer.using_config('train', True), \
            chainer.using_config('enable_backprop', True):
        yield
