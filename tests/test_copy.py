"""copy_model: values copied by path and shape, never shared, with a report.

The small tests build Chains, ChainLists and Sequentials by hand; the
AlexNet tests load a caffemodel with bvlc_alexnet's structure (written once
per session by ``make_alexnet``, 233 MiB) and replay the three situations
the old ``copy_model`` recipe was written for: a new last layer, only the
early convolutions reused, one layer with another channel count.
"""

import logging

import chainer_finetune  # noqa: F401  (patches Chainer; must precede chainer)

import numpy
import pytest

import chainer
from chainer import backend
import chainer.functions as F
import chainer.links as L

from chainer_finetune import load_caffe
from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.caffe.zoo_shapes import make_alexnet
from chainer_finetune.copy import CopyMismatchError
from chainer_finetune.copy import CopyReport
from chainer_finetune.copy import copy_model
from chainer_finetune.errors import ChainerFinetuneError

from gpu_check import gpu_unusable_reason  # noqa: E402


def _randomize(model, seed):
    """Distinct values in every initialized parameter and persistent array."""
    rng = numpy.random.RandomState(seed)
    for _, param in sorted(model.namedparams()):
        if param.array is not None:
            param.array[...] = rng.standard_normal(param.shape)
    for _, link in model.namedlinks():
        for name in sorted(link._persistent):
            value = getattr(link, name)
            if isinstance(value, numpy.ndarray):
                value[...] = rng.uniform(0.5, 2.0, value.shape)
    return model


def _by_path(report):
    return {(e.src_path, e.dst_path): e for e in report}


def _entry(report, path):
    """The entry whose source (else destination) value path is ``path``."""
    found = [e for e in report if (e.src_path or e.dst_path) == path]
    assert len(found) == 1, (path, found)
    return found[0]


class _Small(chainer.Chain):
    """conv -> BN -> fc, with the fc's width and conv's channels chosen."""

    def __init__(self, n_out=5, channels=4, fc_in=4 * 2 * 2):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(3, channels, 3)
            self.bn = L.BatchNormalization(channels)
            self.fc = L.Linear(fc_in, n_out)


# ---------------------------------------------------------------------------
# Values, not references
# ---------------------------------------------------------------------------

def test_copies_values_and_never_aliases():
    src = _randomize(_Small(), 0)
    src.bn.N = 7
    dst = _randomize(_Small(), 1)
    report = copy_model(src, dst)

    assert not report.skipped
    for (path, s), (_, d) in zip(sorted(src.namedparams()),
                                 sorted(dst.namedparams())):
        numpy.testing.assert_array_equal(d.array, s.array, err_msg=path)
        assert not numpy.shares_memory(d.array, s.array), path
    for name in ('avg_mean', 'avg_var'):
        s, d = getattr(src.bn, name), getattr(dst.bn, name)
        numpy.testing.assert_array_equal(d, s)
        assert not numpy.shares_memory(d, s)
    assert dst.bn.N == 7

    before = {p: v.array.copy() for p, v in src.namedparams()}
    mean_before = src.bn.avg_mean.copy()
    for _, param in dst.namedparams():
        param.array[...] += 1
    dst.bn.avg_mean += 1
    dst.bn.N += 1
    for path, param in src.namedparams():
        numpy.testing.assert_array_equal(param.array, before[path])
    numpy.testing.assert_array_equal(src.bn.avg_mean, mean_before)
    assert src.bn.N == 7

    src.conv.W.array[...] = 0
    src.bn.avg_var[...] = 0
    assert numpy.all(dst.conv.W.array != 0)
    assert numpy.all(dst.bn.avg_var != 0)


def test_arrays_shared_by_the_old_recipe_are_separated():
    src = _randomize(_Small(), 0)
    dst = _Small()
    for (_, s), (_, d) in zip(sorted(src.namedparams()),
                              sorted(dst.namedparams())):
        d.array = s.array          # what `b.data = a.data` did
    dst.bn.avg_mean = src.bn.avg_mean
    copy_model(src, dst)
    for (path, s), (_, d) in zip(sorted(src.namedparams()),
                                 sorted(dst.namedparams())):
        numpy.testing.assert_array_equal(d.array, s.array)
        assert not numpy.shares_memory(d.array, s.array), path
    assert not numpy.shares_memory(dst.bn.avg_mean, src.bn.avg_mean)


def test_dst_arrays_are_written_in_place():
    # An optimizer state or user code holding dst's arrays sees the values.
    src = _randomize(_Small(), 0)
    dst = _Small()
    W = dst.conv.W.array
    mean = dst.bn.avg_mean
    copy_model(src, dst)
    assert dst.conv.W.array is W
    assert dst.bn.avg_mean is mean
    numpy.testing.assert_array_equal(W, src.conv.W.array)


# ---------------------------------------------------------------------------
# Devices and dtypes
# ---------------------------------------------------------------------------

def test_float16_dst_gets_values_in_its_dtype():
    src = _randomize(_Small(), 0)
    with chainer.using_config('dtype', numpy.float16):
        dst = _Small()
    assert dst.conv.W.dtype == numpy.float16
    report = copy_model(src, dst)
    assert not report.skipped
    for (path, s), (_, d) in zip(sorted(src.namedparams()),
                                 sorted(dst.namedparams())):
        assert d.dtype == numpy.float16, path
        numpy.testing.assert_array_equal(d.array,
                                         s.array.astype(numpy.float16))
    assert dst.bn.avg_mean.dtype == numpy.float16
    numpy.testing.assert_array_equal(
        dst.bn.avg_mean, src.bn.avg_mean.astype(numpy.float16))

    # And back: float16 into float32 is exact.
    back = copy_model(dst, _Small())
    assert not back.skipped


def test_float16_lazy_dst_is_initialized_in_its_dtype():
    # As at a lazy link's first call, chainer.config.dtype at the time of
    # initialization decides (an explicit initializer dtype would too).
    src = _randomize(_Small(), 0)
    with chainer.using_config('dtype', numpy.float16):
        dst = L.Linear(None, 5)
        report = copy_model(src.fc, dst)
    assert not report.skipped
    assert dst.W.dtype == numpy.float16
    numpy.testing.assert_array_equal(dst.W.array,
                                     src.fc.W.array.astype(numpy.float16))


def test_explicit_numpy_device():
    device = chainer.get_device('@numpy')
    src = _randomize(_Small(), 0)
    dst = _Small()
    dst.to_device(device)
    lazy = L.Linear(None, 5)
    lazy.to_device(device)
    copy_model(src, dst)
    copy_model(src.fc, lazy)
    for link in (dst.conv, dst.fc, lazy):
        for _, param in link.namedparams():
            assert backend.get_device_from_array(param.array) == device
            assert isinstance(param.array, numpy.ndarray)
    numpy.testing.assert_array_equal(lazy.W.array, src.fc.W.array)


# ---------------------------------------------------------------------------
# Lazily initialized destinations
# ---------------------------------------------------------------------------

def test_lazy_linear_takes_a_source_of_its_declared_size():
    src = L.Linear(4096, 10)
    _randomize(src, 0)
    dst = L.Linear(None, 10)
    assert dst.W.array is None
    report = copy_model(src, dst)
    assert not report.skipped
    assert dst.W.shape == (10, 4096)
    numpy.testing.assert_array_equal(dst.W.array, src.W.array)
    y = dst(numpy.ones((2, 4096), numpy.float32))
    assert y.shape == (2, 10)


def test_lazy_linear_refuses_another_out_size():
    src = L.Linear(4096, 1000)
    dst = L.Linear(None, 10)
    report = copy_model(src, dst)
    assert not report
    W = _entry(report, 'W')
    assert W.code == 'shape_mismatch'
    assert W.reason == ('shape (1000, 4096) != (10, *) (declared by '
                        'uninitialized dst)')
    assert W.dst_shape == (10, None)
    assert _entry(report, 'b').reason == 'shape (1000,) != (10,)'
    assert dst.W.array is None     # still lazy, not guessed


def test_lazy_convolutions_take_matching_kernels():
    src = _randomize(L.Convolution2D(4, 8, 3, groups=2), 0)
    dst = L.Convolution2D(None, 8, 3, groups=2)
    assert not copy_model(src, dst).skipped
    numpy.testing.assert_array_equal(dst.W.array, src.W.array)
    x = numpy.ones((1, 4, 5, 5), numpy.float32)
    numpy.testing.assert_array_equal(dst(x).array, src(x).array)

    other_kernel = L.Convolution2D(None, 8, 5)
    report = copy_model(src, other_kernel)
    assert _entry(report, 'W').reason.startswith(
        'shape (8, 2, 3, 3) != (8, *, 5, 5)')
    assert other_kernel.W.array is None

    nd_src = _randomize(L.ConvolutionND(1, 3, 6, 2), 0)
    nd_dst = L.ConvolutionND(1, None, 6, 2)
    assert not copy_model(nd_src, nd_dst).skipped
    assert nd_dst.W.shape == (6, 3, 2)

    de_src = _randomize(L.Deconvolution2D(6, 4, 3, groups=2), 0)
    de_dst = L.Deconvolution2D(None, 4, 3, groups=2)
    assert not copy_model(de_src, de_dst).skipped
    assert de_dst.W.shape == (6, 2, 3, 3)

    dw_src = _randomize(L.DepthwiseConvolution2D(3, 2, 3), 0)
    dw_dst = L.DepthwiseConvolution2D(None, 2, 3)
    assert dw_dst.b.array is None
    assert not copy_model(dw_src, dw_dst).skipped
    numpy.testing.assert_array_equal(dw_dst.b.array, dw_src.b.array)


def test_lazy_batch_normalization_takes_the_source_statistics_shape():
    src = _randomize(L.BatchNormalization(6), 0)
    src.N = 3
    dst = L.BatchNormalization(axis=(0, 2, 3))
    assert dst.avg_mean is None
    report = copy_model(src, dst)
    assert not report.skipped, str(report)
    for name in ('avg_mean', 'avg_var'):
        numpy.testing.assert_array_equal(getattr(dst, name),
                                         getattr(src, name))
    numpy.testing.assert_array_equal(dst.gamma.array, src.gamma.array)
    assert dst.N == 3
    with chainer.using_config('train', False):
        x = numpy.ones((2, 6, 3, 3), numpy.float32)
        numpy.testing.assert_allclose(dst(x).array, src(x).array)


class _Opaque(chainer.Link):
    """A link whose uninitialized parameter declares no shape."""

    def __init__(self, initialized):
        super().__init__()
        with self.init_scope():
            self.W = chainer.Parameter(
                numpy.ones((3, 2), numpy.float32) if initialized else None)


def test_uninitialized_parameters_are_never_guessed():
    report = copy_model(_Opaque(True), _Opaque(False))
    W = _entry(report, 'W')
    assert (W.code, W.reason) == ('uninitialized_in_dst',
                                  'uninitialized in dst, shape unknown')
    assert _entry(copy_model(_Opaque(False), _Opaque(False)),
                  'W').reason == 'uninitialized in both'
    assert _entry(copy_model(_Opaque(False), _Opaque(True)),
                  'W').reason == 'uninitialized in src'


# ---------------------------------------------------------------------------
# Persistents
# ---------------------------------------------------------------------------

def test_batch_norm_statistics_and_count_are_copied():
    src = _randomize(L.BatchNormalization(4), 0)
    src.N = 12
    dst = L.BatchNormalization(4)
    report = copy_model(src, dst)
    names = {(e.name, e.kind, e.status) for e in report}
    assert names == {('gamma', 'param', 'copied'),
                     ('beta', 'param', 'copied'),
                     ('avg_mean', 'persistent', 'copied'),
                     ('avg_var', 'persistent', 'copied'),
                     ('N', 'persistent', 'copied')}
    numpy.testing.assert_array_equal(dst.avg_mean, src.avg_mean)
    numpy.testing.assert_array_equal(dst.avg_var, src.avg_var)
    assert dst.N == 12 and type(dst.N) is int


def test_caffe_style_batch_norm_into_one_with_gamma_and_beta():
    # Caffe's BatchNorm has no affine part: the statistics still copy.
    src = _randomize(L.BatchNormalization(4, use_gamma=False,
                                          use_beta=False), 0)
    dst = L.BatchNormalization(4)
    report = copy_model(src, dst)
    assert report.copied_links == ['']
    assert {e.name for e in report.copied} == {'avg_mean', 'avg_var', 'N'}
    assert {(e.name, e.reason) for e in report.skipped} == {
        ('gamma', 'missing in src'), ('beta', 'missing in src')}
    numpy.testing.assert_array_equal(dst.avg_mean, src.avg_mean)


class _WithPersistents(chainer.Link):
    def __init__(self, **values):
        super().__init__()
        for name, value in values.items():
            setattr(self, name, value)
            self.register_persistent(name)


def test_scalar_array_and_other_persistents():
    src = _WithPersistents(count=numpy.int64(5), scale=0.5,
                           table=numpy.arange(3.0), tag='a',
                           mixed=numpy.zeros(2))
    dst = _WithPersistents(count=0, scale=1.0, table=numpy.zeros(3),
                           tag='b', mixed=3)
    report = copy_model(src, dst)
    by_name = {e.name: e for e in report}
    # `mixed` (array vs int) blocks the link: copied whole or not at all.
    assert by_name['mixed'].reason == 'type mismatch: array in src, int in dst'
    assert by_name['tag'].reason == 'not an array or scalar (str)'
    assert by_name['table'].code == 'held_back'
    assert by_name['table'].reason == 'held back (mixed not copyable)'
    assert dst.count == 0

    del src.mixed, dst.mixed
    src._persistent.discard('mixed')
    dst._persistent.discard('mixed')
    report = copy_model(src, dst)
    assert dst.count == 5 and type(dst.count) is int
    assert dst.scale == 0.5
    numpy.testing.assert_array_equal(dst.table, [0.0, 1.0, 2.0])
    assert dst.tag == 'b'
    assert [e.name for e in report.skipped] == ['tag']


def test_parameter_vs_persistent_is_a_type_mismatch():
    src = _WithPersistents()
    with src.init_scope():
        src.W = chainer.Parameter(numpy.ones((3, 2), numpy.float32))
    dst = _WithPersistents(W=numpy.zeros((3, 2), numpy.float32))
    report = copy_model(src, dst)
    assert _entry(report, 'W').reason == (
        'type mismatch: parameter in src, persistent in dst')


# ---------------------------------------------------------------------------
# Matching links
# ---------------------------------------------------------------------------

def test_link_type_mismatch_with_the_same_name():
    class A(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.layer = L.Linear(4, 4)

    class B(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.layer = L.Convolution2D(4, 4, 1)

    report = copy_model(A(), B())
    assert not report
    assert {e.reason for e in report} == {
        'type mismatch: Linear in src, Convolution2D in dst'}
    assert report.skipped_links == ['layer']


def test_chainlist_and_sequential_nesting():
    class Src(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.features = chainer.ChainList(
                    L.Linear(3, 4), chainer.ChainList(L.Linear(4, 5)))
                self.head = L.Linear(5, 2)

    class Dst(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                # Sequential: link children are numbered among links only.
                self.features = chainer.Sequential(
                    L.Linear(3, 4), F.relu,
                    chainer.Sequential(L.Linear(4, 5)))
                self.head = L.Linear(5, 2)

    src = _randomize(Src(), 0)
    dst = Dst()
    report = copy_model(src, dst)
    assert not report.skipped
    assert report.copied_links == ['features/0', 'features/1/0', 'head']
    numpy.testing.assert_array_equal(dst.features[2][0].W.array,
                                     src.features[1][0].W.array)
    x = numpy.ones((2, 3), numpy.float32)
    expected = src.head(src.features[1][0](F.relu(src.features[0](x))))
    numpy.testing.assert_array_equal(dst.head(dst.features(x)).array,
                                     expected.array)

    # A Sequential root into a ChainList root.
    seq = _randomize(chainer.Sequential(L.Linear(3, 4), F.relu,
                                        L.Linear(4, 2)), 1)
    lst = chainer.ChainList(L.Linear(3, 4), L.Linear(4, 2))
    assert copy_model(seq, lst).copied_links == ['0', '1']
    numpy.testing.assert_array_equal(lst[1].W.array, seq[2].W.array)


class _Flat(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(3, 4, 3)
            self.conv2 = L.Convolution2D(4, 4, 3)
            self.fc = L.Linear(16, 5)


class _Nested(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.features = chainer.Chain()
            with self.features.init_scope():
                self.features.c1 = L.Convolution2D(3, 4, 3)
                self.features.c2 = L.Convolution2D(4, 4, 3)
            self.classifier = L.Linear(16, 7)


def test_mapping_dict_renames_and_drops():
    src = _randomize(_Flat(), 0)
    dst = _Nested()
    report = copy_model(src, dst, mapping={
        'conv1': 'features/c1', '/conv2': 'features/c2/', 'fc': None})
    assert report.copied_links == ['features/c1', 'features/c2']
    numpy.testing.assert_array_equal(dst.features.c2.W.array,
                                     src.conv2.W.array)
    by = _by_path(report)
    assert by[('conv1/W', 'features/c1/W')].copied
    assert by[('fc/W', None)].reason == 'dropped by mapping'
    assert by[(None, 'classifier/W')].reason == 'missing in src'
    assert [e.dst_path for e in report.mismatches] == ['classifier/W',
                                                       'classifier/b']
    assert report.messages()[:2] == ['Copy conv1 -> features/c1',
                                     'Copy conv2 -> features/c2']


def test_mapping_dict_key_moves_a_whole_subtree():
    src = _randomize(_Nested(), 0)
    dst = chainer.Chain()
    with dst.init_scope():
        dst.body = chainer.Chain()
        with dst.body.init_scope():
            dst.body.c1 = L.Convolution2D(3, 4, 3)
            dst.body.c2 = L.Convolution2D(4, 4, 3)
    report = copy_model(src, dst, mapping={'features': 'body',
                                           'classifier': None})
    assert report.copied_links == ['body/c1', 'body/c2']
    assert not report.mismatches


def test_mapping_callable():
    src = _randomize(_Flat(), 0)
    dst = _Nested()
    seen = []

    def rename(path):
        seen.append(path)
        if path == 'fc':
            return 'classifier'
        return 'features/c' + path[-1]

    report = copy_model(src, dst, mapping=rename)
    assert seen == ['conv1', 'conv2', 'fc']
    assert report.copied_links == ['features/c1', 'features/c2']
    assert _entry(report, 'fc/W').reason == 'shape (5, 16) != (7, 16)'
    assert report.skipped_links == ['fc']

    # Dropping fc leaves classifier, of another name, unfilled.
    with pytest.raises(CopyMismatchError, match='classifier/W: missing in '
                       'src'):
        copy_model(src, dst, mapping=lambda p: None if p == 'fc'
                   else 'features/c' + p[-1], strict=True)


def test_mapping_none_also_drops_the_dst_link_of_that_name():
    src = _randomize(_Small(n_out=1000), 0)
    dst = _Small(n_out=10)
    report = copy_model(src, dst, mapping={'fc': None}, strict=True)
    assert report.skipped_links == ['fc']
    assert {(e.src_path, e.dst_path, e.reason) for e in report.skipped} == {
        ('fc/W', 'fc/W', 'dropped by mapping'),
        ('fc/b', 'fc/b', 'dropped by mapping')}
    assert not report.mismatches


def test_two_sources_onto_one_destination():
    class Twins(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.a = L.Linear(3, 3)
                self.b = L.Linear(3, 3)

    src = _randomize(Twins(), 0)
    dst = Twins()
    # What the mapping names wins over a link that keeps its path.
    report = copy_model(src, dst, mapping={'a': 'b'})
    numpy.testing.assert_array_equal(dst.b.W.array, src.a.W.array)
    assert _entry(report, 'b/W').reason == 'dst b already filled from a'
    assert _entry(report, 'b/W').code == 'duplicate'
    assert _by_path(report)[(None, 'a/W')].reason == 'missing in src'
    assert report.copied_links == ['b']
    assert report.messages()[0] == 'Copy a -> b'


def test_mapping_errors():
    with pytest.raises(TypeError):
        copy_model(_Flat(), _Flat(), mapping=['conv1'])
    with pytest.raises(TypeError):
        copy_model(_Flat(), _Flat(), mapping={'conv1': 3})
    with pytest.raises(TypeError):
        copy_model(numpy.zeros(3), _Flat())
    report = copy_model(_Flat(), _Flat(), mapping={'conv9': 'conv1'})
    assert report.unused_mapping_keys == ['conv9']
    assert "unused mapping key 'conv9'" in str(report)


# ---------------------------------------------------------------------------
# strict
# ---------------------------------------------------------------------------

def test_strict_lists_every_mismatch_and_copies_nothing():
    src = _randomize(_Small(n_out=1000, channels=6, fc_in=24), 0)
    dst = _Small(n_out=10)
    extra = L.Linear(2, 2)
    with dst.init_scope():
        dst.extra = extra
    before = {p: v.array.copy() for p, v in dst.namedparams()}
    with pytest.raises(CopyMismatchError) as info:
        copy_model(src, dst, mapping={'nonexistent': None}, strict=True)
    err = info.value
    assert isinstance(err, ChainerFinetuneError)
    assert isinstance(err, ValueError)
    message = str(err)
    for line in ('conv/W: shape (6, 3, 3, 3) != (4, 3, 3, 3)',
                 'conv/b: shape (6,) != (4,)',
                 'bn/avg_mean: shape (6,) != (4,)',
                 'bn/gamma: shape (6,) != (4,)',
                 'fc/W: shape (1000, 24) != (10, 16)',
                 'fc/b: shape (1000,) != (10,)',
                 'extra/W: missing in src',
                 'extra/b: missing in src',
                 "mapping key 'nonexistent': no such link in src"):
        assert line in message
    # bn/N would copy but is held back by its link's mismatches: listed in
    # the report, not as a mismatch.
    assert 'bn/N' not in message
    assert _entry(err.report, 'bn/N').code == 'held_back'
    assert len(err.mismatches) == 10
    assert err.unused_mapping_keys == ['nonexistent']
    for path, param in dst.namedparams():
        numpy.testing.assert_array_equal(param.array, before[path])


def test_strict_passes_on_matching_models():
    src = _randomize(_Small(), 0)
    dst = _Small()
    report = copy_model(src, dst, strict=True)
    assert len(report) == len(report.copied) == 9


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------

def test_report_table_len_bool_and_log(caplog):
    src = _randomize(_Small(n_out=1000), 0)
    dst = _Small(n_out=10)
    with caplog.at_level(logging.INFO, logger='chainer_finetune.copy'):
        report = copy_model(src, dst)
    assert isinstance(report, CopyReport)
    assert len(report) == 9 and len(report.copied) == 7
    assert bool(report)
    assert report.copied_links == ['bn', 'conv']
    assert report.skipped_links == ['fc']
    W = _entry(report, 'fc/W')
    assert (W.src, W.dst, W.name, W.kind, W.status, W.code) == (
        'fc', 'fc', 'W', 'param', 'skipped', 'shape_mismatch')
    assert (W.src_shape, W.dst_shape) == ((1000, 16), (10, 16))

    logged = [r.getMessage() for r in caplog.records]
    assert 'Copy conv' in logged and 'Copy bn' in logged
    assert 'Ignore fc: W shape (1000, 16) != (10, 16)' in logged
    assert 'Ignore fc: b shape (1000,) != (10,)' in logged
    assert logged[:-1] == report.messages()

    text = str(report).splitlines()
    assert text[0] == report.summary() == (
        '7 of 9 values copied, 2 skipped; links: 2 copied, 1 skipped')
    header = text[1]
    assert header.split() == ['status', 'src', 'dst', 'shape', 'reason']
    columns = [header.index(c) for c in ('src', 'dst', 'shape', 'reason')]
    rows = text[2:]
    assert len(rows) == len(report)
    for row, entry in zip(rows, report):
        assert row.startswith(entry.status)
        assert row[columns[0]:].startswith(entry.src_path)
        assert row[columns[1]:].startswith(entry.dst_path)
        if entry.reason:
            assert row[columns[3]:] == entry.reason
    assert any('(1000, 16)' in row and 'fc/W' in row for row in rows)

    empty = copy_model(L.Linear(2, 3), L.Linear(3, 3))
    assert len(empty) == 2 and not empty and not empty.copied


# ---------------------------------------------------------------------------
# Caffe sources
# ---------------------------------------------------------------------------

@pytest.fixture(scope='module')
def googlenet_like(tmp_path_factory):
    """A tiny CaffeNet with GoogLeNet-style names containing '/'."""
    rng = numpy.random.RandomState(0)
    w = NetWriter('slashes')
    w.input('data', (1, 3, 8, 8))
    w.layer('conv1/7x7_s2', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3, 'stride': 2}},
            blobs=[rng.standard_normal((4, 3, 3, 3)),
                   rng.standard_normal(4)])
    w.layer('conv1/bn', 'BatchNorm', 'conv1', 'conv1',
            blobs=[rng.standard_normal(4) * 2, rng.uniform(1, 2, 4) * 2,
                   numpy.array([2.0])])
    w.layer('conv1/scale', 'Scale', 'conv1', 'conv1',
            params={'scale_param': {'bias_term': True}},
            blobs=[rng.uniform(1, 2, 4), rng.standard_normal(4)])
    w.layer('loss3/classifier', 'InnerProduct', 'conv1', 'fc',
            params={'inner_product_param': {'num_output': 1000}},
            blobs=[rng.standard_normal((1000, 36)),
                   rng.standard_normal(1000)])
    path = tmp_path_factory.mktemp('slashes') / 'slashes.caffemodel'
    w.write_caffemodel(path)
    return load_caffe(path)


class _Stem(chainer.Chain):
    def __init__(self, n_class=10):
        super().__init__()
        with self.init_scope():
            self.stem = chainer.Chain()
            with self.stem.init_scope():
                self.stem.conv = L.Convolution2D(None, 4, 3, stride=2)
                self.stem.bn = L.BatchNormalization(4, use_gamma=False,
                                                    use_beta=False)
                self.stem.scale = L.Scale(axis=1, W_shape=(4,),
                                          bias_term=True)
            self.classifier = L.Linear(None, n_class)


def test_caffe_names_with_slashes_as_mapping_keys(googlenet_like):
    net = googlenet_like
    assert net.link_names['conv1/7x7_s2'] == 'conv1_7x7_s2'
    dst = _Stem()
    report = copy_model(net, dst, mapping={
        'conv1/7x7_s2': 'stem/conv',
        'conv1/bn': 'stem/bn',
        'conv1_scale': 'stem/scale',       # link names work too
        'loss3/classifier': None})
    assert report.copied_links == ['stem/conv', 'stem/bn', 'stem/scale']
    numpy.testing.assert_array_equal(dst.stem.conv.W.array,
                                     net['conv1/7x7_s2'].W.array)
    numpy.testing.assert_array_equal(dst.stem.bn.avg_var,
                                     net['conv1/bn'].avg_var)
    # Caffe's Scale link holds W and b; L.Scale keeps its bias in a child.
    scale = _by_path(report)
    assert scale[('conv1_scale/W', 'stem/scale/W')].copied
    assert scale[('conv1_scale/b', 'stem/scale/b')].reason == 'missing in dst'
    assert scale[(None, 'stem/scale/bias/b')].reason == 'missing in src'
    assert dst.classifier.W.array is None

    with chainer.using_config('train', False):
        x = numpy.random.RandomState(1).standard_normal(
            (1, 3, 8, 8)).astype(numpy.float32)
        expected, = net(inputs={'data': x}, outputs=['conv1'],
                        disable=['conv1/scale'])
        got = dst.stem.bn(dst.stem.conv(x))
    numpy.testing.assert_allclose(got.array, expected.array, rtol=1e-5,
                                  atol=1e-5)


# -- AlexNet ----------------------------------------------------------------

@pytest.fixture(scope='session')
def alexnet_caffemodel(tmp_path_factory):
    """bvlc_alexnet's structure with random weights (233 MiB), once."""
    path = tmp_path_factory.mktemp('alexnet') / 'bvlc_alexnet.caffemodel'
    make_alexnet(path, seed=3)
    return path


@pytest.fixture(scope='module')
def caffe_alexnet(alexnet_caffemodel):
    # Never modified by the tests: copy_model only reads its source.
    return load_caffe(alexnet_caffemodel)


class AlexNet(chainer.Chain):
    """AlexNet as people write it in Chainer, with bvlc's layer names."""

    def __init__(self, n_class=1000, conv3_channels=384, lazy_fc6=False):
        super().__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(3, 96, 11, stride=4)
            self.conv2 = L.Convolution2D(96, 256, 5, pad=2, groups=2)
            self.conv3 = L.Convolution2D(256, conv3_channels, 3, pad=1)
            self.conv4 = L.Convolution2D(conv3_channels, 384, 3, pad=1,
                                         groups=2)
            self.conv5 = L.Convolution2D(384, 256, 3, pad=1, groups=2)
            self.fc6 = L.Linear(None if lazy_fc6 else 9216, 4096)
            self.fc7 = L.Linear(4096, 4096)
            self.fc8 = L.Linear(4096, n_class)

    def features(self, x):
        # Caffe's LRN divides alpha by local_size; Chainer's does not.
        def lrn(h):
            return F.local_response_normalization(h, 5, 1, 1e-4 / 5, 0.75)
        h = F.max_pooling_2d(lrn(F.relu(self.conv1(x))), 3, 2)
        h = F.max_pooling_2d(lrn(F.relu(self.conv2(h))), 3, 2)
        h = F.relu(self.conv3(h))
        h = F.relu(self.conv4(h))
        return F.max_pooling_2d(F.relu(self.conv5(h)), 3, 2)


_ALEXNET_LINKS = ['conv1', 'conv2', 'conv3', 'conv4', 'conv5',
                  'fc6', 'fc7', 'fc8']


def test_alexnet_new_last_layer(caffe_alexnet, caplog):
    net = caffe_alexnet
    dst = AlexNet(n_class=10, lazy_fc6=True)
    with caplog.at_level(logging.INFO, logger='chainer_finetune.copy'):
        report = copy_model(net, dst)
    assert report.copied_links == _ALEXNET_LINKS[:-1]
    assert report.skipped_links == ['fc8']
    assert [(e.src_path, e.reason) for e in report.skipped] == [
        ('fc8/W', 'shape (1000, 4096) != (10, 4096)'),
        ('fc8/b', 'shape (1000,) != (10,)')]
    logged = [r.getMessage() for r in caplog.records]
    assert 'Copy conv1' in logged
    assert 'Ignore fc8: W shape (1000, 4096) != (10, 4096)' in logged

    assert dst.fc6.W.shape == (4096, 9216)      # lazy fc6 initialized
    for name in _ALEXNET_LINKS[:-1]:
        for p in ('W', 'b'):
            s = getattr(net[name], p).array
            d = getattr(getattr(dst, name), p).array
            numpy.testing.assert_array_equal(d, s, err_msg=name + '/' + p)
            assert not numpy.shares_memory(d, s)

    # The copied convolutions compute what the Caffe net computes.
    x = numpy.random.RandomState(0).uniform(
        -100, 100, (1, 3, 227, 227)).astype(numpy.float32)
    with chainer.using_config('train', False), \
            chainer.using_config('enable_backprop', False):
        h = x
        for name in _ALEXNET_LINKS[:5]:
            if name == 'conv2':
                h = F.max_pooling_2d(F.relu(dst.conv1(x)), 3, 2).array
            elif name != 'conv1':
                h = F.relu(getattr(dst, prev)(h)).array
            numpy.testing.assert_array_equal(
                getattr(dst, name)(h).array, net[name](h).array)
            prev = name
        # Chainer's own functions on both sides (the fast path's matrix
        # products round differently: checked against them below).
        net.fast_path = False
        try:
            pool5, fc7 = net(inputs={'data': x}, outputs=['pool5', 'fc7'])
        finally:
            del net.fast_path
        fast5, = net(inputs={'data': x}, outputs=['pool5'])
        assert numpy.linalg.norm(fast5.array - pool5.array) <= \
            1e-6 * numpy.linalg.norm(pool5.array)
        got = dst.features(x)
        numpy.testing.assert_allclose(got.array, pool5.array, rtol=1e-5,
                                      atol=1e-4)
        got_fc7 = F.relu(dst.fc7(F.relu(dst.fc6(got))))
        numpy.testing.assert_allclose(got_fc7.array, fc7.array, rtol=1e-4,
                                      atol=1e-3)


class _EarlyConvs(chainer.Chain):
    """conv1-conv3 reused, a new conv and classifier trained from scratch."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(3, 96, 11, stride=4)
            self.conv2 = L.Convolution2D(96, 256, 5, pad=2, groups=2)
            self.conv3 = L.Convolution2D(256, 384, 3, pad=1)
            self.conv4_new = L.Convolution2D(384, 128, 3, pad=1)
            self.bn4 = L.BatchNormalization(128)
            self.fc = L.Linear(None, 10)


def test_alexnet_only_early_convolutions(caffe_alexnet):
    net = caffe_alexnet
    dst = _EarlyConvs()
    fresh = {p: v.array.copy() for p, v in dst.namedparams()
             if v.array is not None and 'new' in p}
    report = copy_model(net, dst)
    assert report.copied_links == ['conv1', 'conv2', 'conv3']
    assert report.skipped_links == ['conv4', 'conv5', 'fc6', 'fc7', 'fc8',
                                    'bn4', 'conv4_new', 'fc']
    reasons = {(e.src_path or e.dst_path): e.reason for e in report.skipped}
    assert reasons['conv5/W'] == 'missing in dst'
    assert reasons['conv4_new/W'] == 'missing in src'
    assert reasons['bn4/avg_mean'] == 'missing in src'
    for path, value in fresh.items():
        numpy.testing.assert_array_equal(dict(dst.namedparams())[path].array,
                                         value)
    assert dst.fc.W.array is None
    numpy.testing.assert_array_equal(dst.conv3.W.array, net.conv3.W.array)

    # Dropping the rest on purpose leaves only the new layers to report.
    report = copy_model(net, dst, mapping={n: None for n in (
        'conv4', 'conv5', 'fc6', 'fc7', 'fc8')})
    assert {e.dst_path.split('/')[0] for e in report.mismatches} == {
        'conv4_new', 'bn4', 'fc'}


def test_alexnet_one_layer_with_fewer_channels(caffe_alexnet):
    net = caffe_alexnet
    dst = AlexNet(n_class=1000, conv3_channels=256)
    report = copy_model(net, dst)
    assert report.skipped_links == ['conv3', 'conv4']
    assert report.copied_links == ['conv1', 'conv2', 'conv5', 'fc6', 'fc7',
                                   'fc8']
    reasons = {e.src_path: e.reason for e in report.skipped}
    assert reasons == {
        'conv3/W': 'shape (384, 256, 3, 3) != (256, 256, 3, 3)',
        'conv3/b': 'shape (384,) != (256,)',
        'conv4/W': 'shape (384, 192, 3, 3) != (384, 128, 3, 3)',
        'conv4/b': 'held back (W not copyable)'}
    # conv4's bias has the right shape but belongs to other weights.
    assert not numpy.array_equal(dst.conv4.b.array, net.conv4.b.array)
    numpy.testing.assert_array_equal(dst.conv5.W.array, net.conv5.W.array)


# ---------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------


@pytest.mark.gpu
def test_numpy_src_into_cupy_dst_and_back():
    reason = gpu_unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    import cupy
    device = chainer.get_device('@cupy:0')
    src = _randomize(_Small(), 0)
    src.bn.N = 4
    dst = _Small()
    dst.to_device(device)
    with chainer.using_config('dtype', numpy.float16):
        lazy = L.Linear(None, 5)
    lazy.to_device(device)

    assert not copy_model(src, dst).skipped
    with chainer.using_config('dtype', numpy.float16):
        assert not copy_model(src.fc, lazy).skipped
    for (path, s), (_, d) in zip(sorted(src.namedparams()),
                                 sorted(dst.namedparams())):
        assert isinstance(d.array, cupy.ndarray), path
        numpy.testing.assert_array_equal(cupy.asnumpy(d.array), s.array)
    assert isinstance(dst.bn.avg_mean, cupy.ndarray)
    numpy.testing.assert_array_equal(cupy.asnumpy(dst.bn.avg_var),
                                     src.bn.avg_var)
    assert dst.bn.N == 4
    assert isinstance(lazy.W.array, cupy.ndarray)
    assert lazy.W.dtype == numpy.float16
    numpy.testing.assert_array_equal(cupy.asnumpy(lazy.W.array),
                                     src.fc.W.array.astype(numpy.float16))

    # CuPy back into NumPy, into a fresh CPU model.
    back = _Small()
    assert not copy_model(dst, back).skipped
    numpy.testing.assert_array_equal(back.conv.W.array, src.conv.W.array)
    assert isinstance(back.bn.avg_mean, numpy.ndarray)
