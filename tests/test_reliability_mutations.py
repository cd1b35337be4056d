"""Tests that catch bugs the rest of the suite let through (issue 11).

Each test names the hand mutation it guards against: with that one small
bug put back into the library, the test fails.
"""

import chainer_finetune  # noqa: F401  (patches Chainer; must precede chainer)

import math

import numpy

import chainer.links as L

from chainer_finetune.caffe.verify import ComparisonRow
from chainer_finetune.caffe.verify import compare_arrays
from chainer_finetune.caffe.verify import format_comparison
from chainer_finetune.copy import copy_model


def _filled(link, seed):
    rng = numpy.random.RandomState(seed)
    for _, param in sorted(link.namedparams()):
        if param.array is not None:
            param.array[...] = rng.standard_normal(param.shape)
    return link


def _w_entry(report):
    found = [e for e in report if e.name == 'W']
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------
# copy.py: the rank of a lazily initialised destination
# Mutation caught: copy._fits without ``len(shape) == len(declared)``.
# ---------------------------------------------------------------------------

def test_2d_kernel_is_not_copied_into_a_lazy_1d_convolution():
    src = _filled(L.ConvolutionND(2, 3, 6, 2), 0)     # W (6, 3, 2, 2)
    dst = L.ConvolutionND(1, None, 6, 2)              # W (6, *, 2) once built
    report = copy_model(src, dst)
    W = _w_entry(report)
    assert not W.copied
    assert W.code == 'shape_mismatch'
    assert W.reason == ('shape (6, 3, 2, 2) != (6, *, 2) (declared by '
                        'uninitialized dst)')
    assert W.dst_shape == (6, None, 2)
    assert dst.W.array is None          # still lazy: nothing guessed
    # The bias of the pair is held back with it, not copied on its own.
    assert not report.copied
    assert dst.b.array is not None and not dst.b.array.any()


def test_1d_kernel_is_not_copied_into_a_lazy_2d_convolution():
    src = _filled(L.ConvolutionND(1, 3, 6, 2), 1)     # W (6, 3, 2)
    dst = L.ConvolutionND(2, None, 6, 2)              # W (6, *, 2, 2)
    report = copy_model(src, dst)
    W = _w_entry(report)
    assert W.code == 'shape_mismatch'
    assert W.dst_shape == (6, None, 2, 2)
    assert dst.W.array is None
    assert not report.copied


def test_same_rank_lazy_convolution_still_takes_the_kernel():
    # The control: the refusal above is about rank, not about laziness.
    src = _filled(L.ConvolutionND(1, 3, 6, 2), 2)
    dst = L.ConvolutionND(1, None, 6, 2)
    report = copy_model(src, dst)
    assert not report.skipped, str(report)
    numpy.testing.assert_array_equal(dst.W.array, src.W.array)


# ---------------------------------------------------------------------------
# verify.compare_arrays: NaN is never "equal"
# Mutation caught: NaN against NaN counted as equal (the old behaviour).
# ---------------------------------------------------------------------------

def test_compare_arrays_fails_nan_against_nan():
    ours = numpy.array([1.0, numpy.nan, 3.0], numpy.float32)
    assert compare_arrays(ours, ours.copy()) == (math.inf, math.inf)
    all_nan = numpy.full((2, 3), numpy.nan)
    assert compare_arrays(all_nan, all_nan.copy()) == (math.inf, math.inf)


def test_compare_arrays_fails_nan_on_either_side():
    finite = numpy.array([1.0, 2.0, 3.0])
    with_nan = numpy.array([1.0, numpy.nan, 3.0])
    assert compare_arrays(with_nan, finite) == (math.inf, math.inf)
    assert compare_arrays(finite, with_nan) == (math.inf, math.inf)


def test_compare_arrays_keeps_equal_infinities_equal():
    a = numpy.array([1.0, numpy.inf, -numpy.inf, 4.0])
    assert compare_arrays(a, a.copy()) == (0.0, 0.0)
    b = a.copy()
    b[0] = 1.5
    max_abs, rel = compare_arrays(b, a)
    assert max_abs == 0.5
    assert rel == 0.5 / math.sqrt(1.0 + 16.0)   # infinities left out
    assert compare_arrays(a, -a) == (math.inf, math.inf)


def test_a_nan_blob_is_marked_fail_in_the_verify_table():
    nan_blob = numpy.array([[numpy.nan, 1.0]])
    row = ComparisonRow('conv1', 'conv1', (1, 2),
                        *compare_arrays(nan_blob, nan_blob.copy()))
    text = format_comparison([row], tolerance=1e-4)
    assert text.splitlines()[1].endswith('FAIL')
    assert text.endswith('1 beyond tolerance 0.0001')
