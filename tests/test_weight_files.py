"""save_weights (HDF5 / NPZ by Caffe layer name) and load_caffe(weights=)."""

import os
import zipfile

import chainer_finetune

import chainer
import h5py
import numpy
import pytest

from chainer_finetune.caffe import weight_files
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.errors import CaffeModelError

import caffe_nets

FORMATS = ['h5', 'npz']


def write_net(directory, seed=0):
    """A net with every parameter layout the exporter inverts and layer
    names holding '/' (and one holding the encoded form of another's)."""
    rng = numpy.random.RandomState(seed)
    w = NetWriter('slashes')
    w.input('data', (2, 3, 9, 9))
    w.layer('conv1/7x7_s2', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[rng.randn(4, 3, 3, 3) * 0.5, rng.randn(4)])
    w.layer('conv1/bn', 'BatchNorm', 'conv1', 'conv1',
            blobs=[rng.randn(4) * 2.5, rng.uniform(0.5, 1.5, 4) * 2.5,
                   [2.5]])
    w.layer('conv1/scale', 'Scale', 'conv1', 'conv1',
            params={'scale_param': {'bias_term': True}},
            blobs=[rng.uniform(0.5, 1.5, 4), rng.randn(4)])
    w.layer('conv1/prelu', 'PReLU', 'conv1', 'conv1',
            blobs=[rng.randn(4) * 0.3])
    w.layer('x/y', 'Bias', 'conv1', 'conv1', blobs=[rng.randn(4)])
    w.layer('x%2Fy', 'Bias', 'conv1', 'conv1', blobs=[rng.randn(4)])
    w.layer('pool1', 'Pooling', 'conv1', 'pool1',
            params={'pooling_param': {'pool': 'MAX', 'kernel_size': 3,
                                      'stride': 2}})
    w.layer('fc/t', 'InnerProduct', 'pool1', 'fc_t',
            params={'inner_product_param': {'num_output': 6,
                                            'transpose': True}},
            blobs=[rng.randn(36, 6) * 0.3, rng.randn(6)])
    w.layer('fc8', 'InnerProduct', 'fc_t', 'fc8',
            params={'inner_product_param': {'num_output': 5}},
            blobs=[rng.randn(5, 6), rng.randn(5)])
    w.layer('prob', 'Softmax', 'fc8', 'prob')
    model = os.path.join(directory, 'net.caffemodel')
    prototxt = os.path.join(directory, 'net.prototxt')
    w.write_caffemodel(model)
    w.write_prototxt(prototxt)
    return model, prototxt


@pytest.fixture
def net_files(tmp_path):
    return write_net(str(tmp_path))


def run(net, x, outputs=('prob', 'fc_t')):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        return [y.array for y in net(inputs={'data': x}, outputs=outputs)]


def fine_tune(net, rng):
    """Changes parameters and BatchNorm statistics, as training would."""
    x = rng.randn(2, 3, 9, 9).astype(numpy.float32)
    with chainer.using_config('train', True):
        net(inputs={'data': x}, outputs=['prob'])   # updates avg_mean/var
    net['conv1/bn'].N = 3   # counted by BatchNormalization(finetune=True)
    for param in net.params():
        param.array += 0.01
    return x


def state(net):
    """Every parameter and persistent value, by path."""
    values = {name: p.array.copy() for name, p in net.namedparams()}
    for path, link in net.namedlinks(skipself=True):
        for name in link._persistent:
            values[path + '/' + name] = numpy.asarray(getattr(link, name))
    return values


# --------------------------------------------------------------------------
# Name encoding
# --------------------------------------------------------------------------

@pytest.mark.parametrize('name', [
    'conv1', 'conv1/7x7_s2', 'a//b/', '/x', 'x%2Fy', '%', '.', '..',
    '.hidden', 'a.b', 'space d', 'ü/ß', 'tab\tname', '~tilde'])
def test_encode_name_is_unambiguous(name):
    key = weight_files.encode_name(name)
    assert '/' not in key and not key.startswith('.')
    assert weight_files.decode_name(key) == name


def test_encoded_names_do_not_collide():
    names = ['x/y', 'x%2Fy', 'x%252Fy', '.x', '%2Ex']
    keys = [weight_files.encode_name(n) for n in names]
    assert len(set(keys)) == len(keys)
    assert weight_files.encode_name('conv1/7x7_s2') == 'conv1%2F7x7_s2'


def test_encode_empty_name_is_refused():
    with pytest.raises(CaffeModelError):
        weight_files.encode_name('')


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------

@pytest.mark.parametrize('fmt', FORMATS)
def test_round_trip_gives_identical_outputs(tmp_path, net_files, fmt,
                                            seeded):
    model, prototxt = net_files
    net = load_caffe(model, prototxt)
    original = net['conv1/bn'].avg_mean.copy()
    x = fine_tune(net, seeded)
    assert not numpy.array_equal(net['conv1/bn'].avg_mean, original)
    out = str(tmp_path / ('tuned.' + fmt))
    chainer_finetune.save_weights(net, out)

    for loaded in (load_caffe(prototxt=prototxt, weights=out),
                   load_caffe(weights=out)):   # structure from the file
        assert loaded.link_names == net.link_names
        expected, got = state(net), state(loaded)
        assert sorted(got) == sorted(expected)
        for key in expected:
            numpy.testing.assert_array_equal(got[key], expected[key],
                                             err_msg=key)
        assert loaded['conv1/bn'].N == 3
        assert isinstance(loaded['conv1/bn'].N, int)
        for a, b in zip(run(net, x), run(loaded, x)):
            numpy.testing.assert_array_equal(a, b)
        assert all(p.grad is None for p in loaded.params())


@pytest.mark.parametrize('fmt', FORMATS)
def test_every_layer_type_round_trips(tmp_path, fmt):
    model, prototxt = str(tmp_path / 'all.caffemodel'), str(
        tmp_path / 'all.prototxt')
    caffe_nets.make_all_layers_net(model, prototxt)
    net = load_caffe(model, prototxt)
    out = str(tmp_path / ('all.' + fmt))
    weight_files.save_weights(net, out)
    loaded = load_caffe(prototxt=prototxt, weights=out)
    inputs = caffe_nets.all_layers_inputs()
    outputs = ['prob', 'fc_t', 'loss', 'accuracy']
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        expected = net(inputs=inputs, outputs=outputs)
        got = loaded(inputs=inputs, outputs=outputs)
    for name, a, b in zip(outputs, expected, got):
        numpy.testing.assert_array_equal(a.array, b.array, err_msg=name)


def test_caffe_blob_layout_in_hdf5(tmp_path, net_files):
    model, prototxt = net_files
    net = load_caffe(model, prototxt)
    out = tmp_path / 'w.h5'
    weight_files.save_weights(net, out)
    with h5py.File(out, 'r') as f:
        assert f.attrs['format'] == weight_files.FORMAT
        conv = f['layers/conv1%2F7x7_s2']
        assert conv.attrs['name'] == 'conv1/7x7_s2'
        assert conv.attrs['type'] == 'Convolution'
        assert conv['blobs/0'].shape == (4, 3, 3, 3)
        assert conv['blobs/0'].attrs['role'] == 'W'
        assert conv['blobs/1'].shape == (4,)
        # InnerProduct with transpose: Caffe's (in, out) again.
        numpy.testing.assert_array_equal(f['layers/fc%2Ft/blobs/0'][()],
                                         net['fc/t'].W.array.T)
        bn = f['layers/conv1%2Fbn']
        numpy.testing.assert_array_equal(bn['blobs/0'][()],
                                         net['conv1/bn'].avg_mean)
        assert bn['blobs/2'][()].tolist() == [1.0]
        assert int(bn['extras/N'][()]) == 0
        assert f['layers/x%2Fy'].attrs['name'] == 'x/y'
        assert f['layers/x%252Fy'].attrs['name'] == 'x%2Fy'
        assert 'conv1/7x7_s2' not in f['layers']   # no nested groups


def test_npz_holds_no_pickles(tmp_path, net_files):
    model, prototxt = net_files
    out = tmp_path / 'w.npz'
    weight_files.save_weights(load_caffe(model, prototxt), out)
    with numpy.load(out, allow_pickle=False) as npz:
        keys = set(npz.files)
        assert 'layers/conv1%2F7x7_s2/blobs/0' in keys
        assert 'layers/x%252Fy/blobs/0' in keys
        for key in keys:
            assert npz[key].dtype != object
    with zipfile.ZipFile(out) as zf:
        assert all(n.endswith('.npy') for n in zf.namelist())


def test_prototxt_selects_weights_by_name(tmp_path, net_files):
    model, prototxt = net_files
    net = load_caffe(model, prototxt)
    out = tmp_path / 'w.npz'
    weight_files.save_weights(net, out)
    backbone = load_caffe(prototxt=prototxt, weights=out, stop_at='pool1')
    assert 'fc8' not in backbone.link_names
    x = numpy.ones((2, 3, 9, 9), numpy.float32)
    numpy.testing.assert_array_equal(run(backbone, x, ['pool1'])[0],
                                     run(net, x, ['pool1'])[0])


def test_cached_load_of_weights_file(tmp_path, net_files, monkeypatch):
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(tmp_path / 'cache'))
    model, prototxt = net_files
    out = tmp_path / 'w.h5'
    weight_files.save_weights(load_caffe(model, prototxt), out)
    first = load_caffe(prototxt=prototxt, weights=out, cache=True)
    second = load_caffe(prototxt=prototxt, weights=out, cache=True)
    x = numpy.ones((2, 3, 9, 9), numpy.float32)
    numpy.testing.assert_array_equal(run(first, x)[0], run(second, x)[0])


# --------------------------------------------------------------------------
# Refusals and errors
# --------------------------------------------------------------------------

@pytest.mark.parametrize('fmt', FORMATS)
def test_refuses_to_overwrite(tmp_path, net_files, fmt):
    model, prototxt = net_files
    net = load_caffe(model, prototxt)
    out = tmp_path / ('mine.' + fmt)
    out.write_bytes(b'precious')
    with pytest.raises(FileExistsError, match='overwrite=True'):
        weight_files.save_weights(net, out)
    assert out.read_bytes() == b'precious'
    weight_files.save_weights(net, out, overwrite=True)
    assert weight_files.weights_format(out) == fmt
    assert sorted(os.listdir(tmp_path)) == sorted(
        ['mine.' + fmt, 'net.caffemodel', 'net.prototxt'])   # no temp files


def test_output_file_does_not_replace_a_file_created_meanwhile(tmp_path):
    target = tmp_path / 'out.bin'
    with pytest.raises(FileExistsError):
        with weight_files.output_file(target) as tmp:
            with open(tmp, 'wb') as f:
                f.write(b'new')
            target.write_bytes(b'theirs')   # appears while we write
    assert target.read_bytes() == b'theirs'
    assert os.listdir(tmp_path) == ['out.bin']


def test_unknown_suffix(tmp_path, net_files):
    net = load_caffe(*net_files)
    with pytest.raises(ValueError, match='.h5 or'):
        weight_files.save_weights(net, tmp_path / 'w.weights')
    weight_files.save_weights(net, tmp_path / 'w.weights', format='npz')
    assert weight_files.weights_format(tmp_path / 'w.weights') == 'npz'


def test_changed_link_is_not_exported(tmp_path, net_files):
    net = load_caffe(*net_files)
    with net['fc8'].init_scope():   # a parameter Caffe has no blob for
        net['fc8'].gain = chainer.Parameter(numpy.ones(5, numpy.float32))
    out = tmp_path / 'w.h5'
    with pytest.raises(CaffeModelError, match="'fc8'.*gain"):
        weight_files.save_weights(net, out)
    assert not out.exists()
    net = load_caffe(*net_files)
    net['conv1/7x7_s2'].b = None   # the layer says bias_term: true
    with pytest.raises(CaffeModelError, match='conv1/7x7_s2'):
        weight_files.save_weights(net, out)
    assert not out.exists()


def test_not_a_weights_file(tmp_path, net_files):
    model, prototxt = net_files
    bad = tmp_path / 'bad.h5'
    bad.write_bytes(b'not hdf5 at all')
    with pytest.raises(CaffeModelError, match='bad.h5'):
        load_caffe(prototxt=prototxt, weights=bad)
    with pytest.raises(CaffeModelError, match='not found'):
        load_caffe(prototxt=prototxt, weights=tmp_path / 'missing.h5')
    foreign = tmp_path / 'foreign.npz'
    numpy.savez(foreign, a=numpy.zeros(3))
    with pytest.raises(CaffeModelError, match='foreign.npz'):
        load_caffe(prototxt=prototxt, weights=foreign)


def test_weights_file_given_as_model_gets_a_hint(tmp_path, net_files):
    model, prototxt = net_files
    out = tmp_path / 'w.npz'
    weight_files.save_weights(load_caffe(model, prototxt), out)
    with pytest.raises(CaffeModelError, match='weights='):
        load_caffe(str(out), prototxt)
    with pytest.raises(ValueError, match='not both'):
        load_caffe(model, prototxt, weights=out)


def test_missing_layer_in_weights_names_it(tmp_path, net_files):
    model, prototxt = net_files
    net = load_caffe(model, prototxt, stop_at='pool1')
    out = tmp_path / 'backbone.h5'
    weight_files.save_weights(net, out)
    with pytest.raises(CaffeModelError, match='fc/t'):
        load_caffe(prototxt=prototxt, weights=out)


def test_public_name():
    assert chainer_finetune.save_weights is weight_files.save_weights
