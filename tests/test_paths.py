"""Link patterns match whole path components or globs, never substrings."""

import chainer
import chainer.links as L
import pytest

from chainer_finetune.errors import LinkNotFoundError
from chainer_finetune.paths import link_paths
from chainer_finetune.paths import match_links
from chainer_finetune.paths import params_under
from chainer_finetune.paths import path_matches


class _Net(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(1, 2, 3)
            self.conv10 = L.Convolution2D(1, 2, 3)
            self.conv1_1 = L.Convolution2D(1, 2, 3)
            self.features = chainer.Sequential(L.Linear(2, 2),
                                               L.Linear(2, 3))
            self.block = chainer.Chain()
            with self.block.init_scope():
                self.block.conv1 = L.Convolution2D(1, 1, 1)


def _names(pairs):
    return [p for p, _ in pairs]


@pytest.mark.parametrize('pattern,path,hit', [
    ('conv1', 'conv1', True),
    ('conv1', 'conv10', False),
    ('conv1', 'conv1_1', False),
    ('conv1', 'block/conv1', True),
    ('/conv1', 'block/conv1', False),
    ('conv1', 'conv1/bn', False),
    ('conv*', 'conv10', True),
    ('fc[67]', 'fc7', True),
    ('fc[67]', 'fc8', False),
    ('features/0', 'features/0', True),
    ('features/0', 'x/features/0', True),
    ('/features/0', 'x/features/0', False),
])
def test_path_matches(pattern, path, hit):
    assert path_matches(pattern, path) is hit


def test_match_links_in_model_order_and_deduplicated():
    net = _Net()
    paths = _names(link_paths(net))
    assert sorted(paths) == [
        'block', 'block/conv1', 'conv1', 'conv10', 'conv1_1', 'features',
        'features/0', 'features/1']

    def in_model_order(names):
        return sorted(names, key=paths.index)

    assert _names(match_links(net, 'conv1')) == in_model_order(
        ['conv1', 'block/conv1'])
    assert _names(match_links(net, ['conv*', 'conv1'])) == in_model_order(
        ['conv1', 'conv10', 'conv1_1', 'block/conv1'])
    assert _names(params_under(match_links(net, ['features', 'features/1']))) \
        == ['features/0/W', 'features/0/b', 'features/1/W', 'features/1/b']


@pytest.mark.parametrize('pattern', ['conv2', 'conv', '', '/block'[:1]])
def test_pattern_matching_nothing_raises(pattern):
    with pytest.raises(LinkNotFoundError):
        match_links(_Net(), pattern)


def test_caffe_names_are_accepted(tmp_path):
    from chainer_finetune import load_caffe
    from chainer_finetune.caffe.writer import NetWriter
    import numpy
    writer = NetWriter('n')
    writer.input('data', (1, 1, 4, 4))
    writer.layer('conv1/7x7_s2', 'Convolution', ['data'], ['c'],
                 params={'convolution_param': {'num_output': 2,
                                               'kernel_size': [3]}},
                 blobs=[numpy.ones((2, 1, 3, 3), 'f'),
                        numpy.zeros(2, 'f')])
    path = str(tmp_path / 'n.caffemodel')
    writer.write_caffemodel(path)
    net = load_caffe(path)
    assert _names(match_links(net, 'conv1/7x7_s2')) == ['conv1_7x7_s2']
    assert _names(match_links(net, 'conv1_*')) == ['conv1_7x7_s2']
