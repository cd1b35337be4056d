"""The fine-tuning job (chainer_finetune.finetune, `chainer-finetune finetune`)
on a small generated Caffe net and a generated image folder; the real demo
(open_nsfw on digits) in a network test with a reduced budget."""

import json
import os

import numpy
import pytest

import chainer_finetune  # noqa: F401  (before chainer)
import chainer  # noqa: E402

from chainer_finetune import cli  # noqa: E402
from chainer_finetune import finetune  # noqa: E402
from chainer_finetune.finetune import datasets as job_data  # noqa: E402
from chainer_finetune import load_caffe  # noqa: E402
from chainer_finetune.caffe.writer import NetWriter  # noqa: E402

N_CLASS = 3


def _write_net(directory, global_stats=True, aux=False, seed=0,
               conv_bias=True):
    """A small ResNet-like Caffe net: conv-BN-scale-relu, pool, fc, prob;
    with ``aux`` an InnerProduct after fc (the last one, not the
    classifier); ``seed`` draws other weights of the same shapes;
    ``conv_bias`` False leaves the convolutions without bias, as ResNets
    have them before a normalization."""
    rng = numpy.random.RandomState(seed)
    w = NetWriter('small')
    w.input('data', (1, 3, 16, 16))

    def conv(name, bottom, c_in, c_out, **settings):
        settings.update(num_output=c_out, kernel_size=3,
                        bias_term=conv_bias)
        blobs = [rng.randn(c_out, c_in, 3, 3) * 0.2]
        if conv_bias:
            blobs.append(rng.randn(c_out) * 0.1)
        specs = [{'lr_mult': 1}, {'lr_mult': 2}] if name == 'conv1' else None
        w.layer(name, 'Convolution', bottom, name,
                params={'convolution_param': settings}, blobs=blobs,
                param_specs=specs[:len(blobs)] if specs else ())
    conv('conv1', 'data', 3, 6, pad=1)
    bn = {'use_global_stats': True} if global_stats else {}
    w.layer('bn1', 'BatchNorm', 'conv1', 'conv1',
            params={'batch_norm_param': bn},
            blobs=[rng.randn(6) * 2, rng.rand(6) * 2 + 1,
                   numpy.array([2.0])])
    w.layer('scale1', 'Scale', 'conv1', 'conv1',
            params={'scale_param': {'bias_term': True}},
            blobs=[rng.rand(6) + 0.5, rng.randn(6) * 0.1])
    w.layer('relu1', 'ReLU', 'conv1', 'conv1')
    conv('conv2', 'conv1', 6, 8, stride=2)
    w.layer('relu2', 'ReLU', 'conv2', 'conv2')
    w.layer('pool', 'Pooling', 'conv2', 'pool',
            params={'pooling_param': {'pool': 'AVE', 'global_pooling': True}})
    w.layer('fc', 'InnerProduct', 'pool', 'fc',
            params={'inner_product_param': {'num_output': 5}},
            blobs=[rng.randn(5, 8) * 0.3, rng.randn(5) * 0.1],
            param_specs=[{'lr_mult': 10}, {'lr_mult': 20}])
    w.layer('prob', 'Softmax', 'fc', 'prob')
    if aux:
        w.layer('aux', 'InnerProduct', 'fc', 'aux',
                params={'inner_product_param': {'num_output': 2}},
                blobs=[rng.randn(2, 5) * 0.3, rng.randn(2) * 0.1])
    model = os.path.join(directory, 'small.caffemodel')
    prototxt = os.path.join(directory, 'small.prototxt')
    w.write_caffemodel(model)
    w.write_prototxt(prototxt)
    return model, prototxt


def _write_images(root, per_class=6):
    """root/<class>/*.png: bright, dark and striped 20x20 images."""
    from PIL import Image
    rng = numpy.random.RandomState(1)
    for c in range(N_CLASS):
        os.makedirs(os.path.join(root, 'class{}'.format(c)))
        for i in range(per_class):
            base = numpy.full((20, 20, 3), 40 + 90 * c, numpy.float64)
            if c == 2:
                base[::4] = 250
            image = numpy.clip(base + rng.randn(20, 20, 3) * 10, 0, 255)
            Image.fromarray(image.astype(numpy.uint8)).save(os.path.join(
                root, 'class{}'.format(c), '{}.png'.format(i)))
    return root


@pytest.fixture(scope='module')
def material(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp('finetune'))
    model, prototxt = _write_net(directory)
    images = _write_images(os.path.join(directory, 'images'))
    return model, prototxt, images


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    # load_caffe(cache=True) writes into the per-user cache: keep tests out.
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(tmp_path / 'cache'))


def _config(material, tmp_path, **kwargs):
    model, prototxt, images = material
    values = dict(caffemodel=model, prototxt=prototxt, data=images,
                  input_size=16, train_per_class=4, test_per_class=2,
                  epochs=2, batchsize=4, out=str(tmp_path / 'out'))
    values.update(kwargs)
    return finetune.FinetuneConfig(**values)


def _backbone_values(model):
    return {name: param.array.copy()
            for name, param in model.backbone.namedparams()}


def test_feature_layer_run_writes_everything(material, tmp_path):
    config = _config(material, tmp_path, feature_layer='conv2',
                     compare_scratch=True)
    result = finetune.run_finetune(config)
    pretrained, scratch = result.runs
    assert [r.name for r in result.runs] == ['pretrained', 'scratch']
    for run in result.runs:
        assert len(run.log) == 2 and len(run.epoch_seconds) == 2
        assert 0.0 <= run.accuracy <= 1.0
        for name in ('log', 'best_model.npz', 'loss.png', 'accuracy.png'):
            assert os.path.isfile(os.path.join(run.out, name)), name
    assert result.summary == 'pretrained: {:.3f} scratch: {:.3f}'.format(
        pretrained.accuracy, scratch.accuracy)
    assert os.path.isfile(result.plot_path)
    with open(result.plot_path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    report = open(result.report_path, encoding='utf-8').read()
    assert '| pretrained | {:.3f}'.format(pretrained.accuracy) in report
    assert '| scratch | {:.3f}'.format(scratch.accuracy) in report
    assert '`{}`'.format(result.summary) in report
    assert 'global average pooling of blob `conv2`' in report
    assert '![held-out accuracy per epoch](accuracy.png)' in report
    # Every backbone value was copied; only the head is new.
    copy = pretrained.copy_report
    assert set(copy.copied_links) == {'backbone/conv1', 'backbone/bn1',
                                      'backbone/scale1', 'backbone/conv2'}
    assert {e.dst for e in copy.skipped} == {'head', 'head_norm'}
    # '*' froze the whole backbone: the frozen layers are listed.
    assert set(pretrained.frozen) == {'conv1', 'bn1', 'scale1', 'conv2'}
    assert 'frozen at the start: 4 links' in report
    # The per-epoch table has a row per epoch.
    assert '| 2 | ' in report and '| 3 | ' not in report


def test_frozen_backbone_keeps_the_caffe_values(material, tmp_path):
    config = _config(material, tmp_path, feature_layer='conv2')
    n_class = N_CLASS
    model, report = finetune.build_classifier(config, n_class, True)
    net = load_caffe(config.caffemodel, config.prototxt)
    for name in ('conv1', 'conv2', 'scale1'):
        numpy.testing.assert_array_equal(model.backbone[name].W.array,
                                         net[name].W.array)
    numpy.testing.assert_array_equal(model.backbone['bn1'].avg_mean,
                                     net['bn1'].avg_mean)
    _, train_set, test_set = job_data.load_split(config)
    train, test = job_data.transformed(config, train_set, test_set)
    before = _backbone_values(model)
    run = finetune.train_one(config, 'pretrained', model, report, train,
                             test, pretrained=True)
    after = _backbone_values(model)
    assert before.keys() == after.keys()
    for name in before:
        numpy.testing.assert_array_equal(before[name], after[name])
    numpy.testing.assert_array_equal(model.backbone['bn1'].avg_mean,
                                     net['bn1'].avg_mean)
    assert run.log[-1]['epoch'] == 2
    # The best model was saved and loads into the same structure.
    fresh, _ = finetune.build_classifier(config, n_class, True)
    x, _ = chainer.dataset.concat_examples([test[0]])
    with chainer.using_config('train', False):
        fresh(x)   # sizes the lazy head
        chainer.serializers.load_npz(
            os.path.join(run.out, 'best_model.npz'), fresh)
        assert fresh(x).shape == (1, n_class)


def test_scratch_network_is_reinitialized(material, tmp_path):
    config = _config(material, tmp_path, feature_layer='conv2')
    pretrained, report = finetune.build_classifier(config, N_CLASS, True)
    scratch, none = finetune.build_classifier(config, N_CLASS, False)
    assert none is None and report is not None
    net = load_caffe(config.caffemodel, config.prototxt)
    conv = scratch.backbone['conv1'].W.array
    assert not numpy.array_equal(conv, net['conv1'].W.array)
    # He-normal: std sqrt(2 / fan_in). The weights of conv1 (fan_in 27) and
    # conv2 (54) scaled by it pool to 594 draws of std 1 (the sample std's
    # own spread about 0.03); LeCun-normal (std sqrt(1 / fan_in)) gives
    # 0.71 and Glorot-normal less, both far outside the bound.
    standardized = numpy.concatenate([
        (scratch.backbone[name].W.array / numpy.sqrt(2 / fan_in)).ravel()
        for name, fan_in in (('conv1', 3 * 3 * 3), ('conv2', 6 * 3 * 3))])
    assert standardized.size == 594
    assert abs(standardized.std() - 1) < 0.1, standardized.std()
    assert abs(standardized.mean()) < 0.15, standardized.mean()
    assert not scratch.backbone['conv1'].b.array.any()
    assert (scratch.backbone['scale1'].W.array == 1).all()
    bn = scratch.backbone['bn1']
    assert not bn.avg_mean.any() and (bn.avg_var == 1).all()
    assert bn.caffe_factor == 0
    # Batch statistics in training (the stored ones mean nothing yet).
    x = numpy.random.RandomState(0).randn(4, 3, 16, 16).astype('f') * 50
    with chainer.using_config('train', True):
        h, = scratch.backbone(inputs={'data': x}, outputs=['conv1'])
    assert bn.caffe_factor == 1.0
    assert bn.avg_mean.any()
    # A short run from scratch averages its statistics over ~10 steps.
    with chainer.using_config('train', True):
        scratch.backbone(inputs={'data': x}, outputs=['conv1'])
    assert bn.caffe_factor == pytest.approx(0.9 + 1)
    pretrained_bn = pretrained.backbone._functions['bn1']
    assert pretrained_bn.moving_average_fraction == pytest.approx(0.999)
    # The pretrained copy is untouched by the scratch build.
    numpy.testing.assert_array_equal(pretrained.backbone['conv1'].W.array,
                                     net['conv1'].W.array)


def test_replaced_head_without_feature_layer(material, tmp_path):
    config = _config(material, tmp_path, freeze=['conv*'])
    result = finetune.run_finetune(config)
    run, = result.runs
    assert set(run.frozen) == {'conv1', 'conv2'}
    copy = run.copy_report
    fc = [e for e in copy.entries if e.dst == 'backbone/fc']
    assert fc and all(not e.copied for e in fc)
    assert any('(5, 8)' in e.reason for e in fc)
    report = open(result.report_path, encoding='utf-8').read()
    assert "last InnerProduct layer replaced by one with 3 outputs" in report
    assert result.summary.startswith('pretrained: ')
    assert 'scratch' not in result.summary


def test_unfreeze_at_and_lr_mults(material, tmp_path):
    config = _config(material, tmp_path, feature_layer='conv2',
                     freeze=['conv1', 'conv2'], unfreeze_at=1,
                     unfreeze=['conv2'], lr_mult_from_prototxt=True)
    model, report = finetune.build_classifier(config, N_CLASS, True)
    _, train_set, test_set = job_data.load_split(config)
    train, test = job_data.transformed(config, train_set, test_set)
    conv1 = model.backbone['conv1'].W.array.copy()
    conv2 = model.backbone['conv2'].W.array.copy()
    finetune.train_one(config, 'pretrained', model, report, train, test,
                       pretrained=True)
    numpy.testing.assert_array_equal(model.backbone['conv1'].W.array, conv1)
    assert not numpy.array_equal(model.backbone['conv2'].W.array, conv2)
    # The prototxt's lr_mult 2 on conv1's bias reached its update rule.
    rule = model.backbone['conv1'].b.update_rule
    assert rule.hyperparam.alpha == pytest.approx(2 * config.lr)


def test_bad_configurations_are_library_errors(material, tmp_path):
    with pytest.raises(finetune.FinetuneError, match='augment'):
        finetune.run_finetune(_config(material, tmp_path, augment='rotate'))
    with pytest.raises(finetune.FinetuneError, match='labels up to 2'):
        finetune.run_finetune(_config(material, tmp_path, n_class=2))
    with pytest.raises(chainer_finetune.errors.ChainerFinetuneError):
        finetune.run_finetune(_config(material, tmp_path,
                                      feature_layer='no_such_blob'))
    assert issubclass(finetune.FinetuneError,
                      chainer_finetune.errors.ChainerFinetuneError)


def test_cli_finetune(material, tmp_path, capsys):
    model, prototxt, images = material
    out = str(tmp_path / 'cli')
    code = cli.main(['finetune', '--caffemodel', model, '--prototxt',
                     prototxt, '--data', images, '--feature-layer', 'conv2',
                     '--input-size', '16', '--train-per-class', '4',
                     '--test-per-class', '2', '--epochs', '1',
                     '--batchsize', '4', '--compare-scratch', '--out', out])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith('pretrained: ')
    assert ' scratch: ' in lines[-1]
    assert lines[0] == 'report: ' + os.path.join(out, 'report.md')
    with open(os.path.join(out, 'pretrained', 'log')) as f:
        assert len(json.load(f)) == 1
    # A user's error is one line on stderr, exit status 2.
    code = cli.main(['finetune', '--caffemodel', model, '--data',
                     str(tmp_path / 'missing')])
    assert code == 2
    assert 'error:' in capsys.readouterr().err


def test_cli_without_model_and_data_is_the_demo():
    args = cli.build_parser().parse_args(['finetune'])
    config = cli.finetune_config(args)
    for key, value in finetune.DEMO.items():
        assert getattr(config, key) == value, key
    assert config.freeze == ['*']
    args = cli.build_parser().parse_args(
        ['finetune', '--epochs', '3', '--device', '@cupy:0'])
    config = cli.finetune_config(args)
    assert (config.epochs, config.device) == (3, '@cupy:0')
    assert config.caffemodel == 'open_nsfw'
    # With a model or data given the demo's defaults do not apply.
    args = cli.build_parser().parse_args(['finetune', '--data', 'x',
                                          '--no-freeze'])
    config = cli.finetune_config(args)
    assert config.feature_layer is None and not config.compare_scratch
    assert config.freeze == []


@pytest.mark.network
@pytest.mark.slow
def test_demo_on_open_nsfw_and_digits_reduced(tmp_path, monkeypatch):
    """The demo's model and data for real, with a small budget."""
    models_cache = os.path.join(os.path.dirname(__file__), '..', '.cache',
                                'models')
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(tmp_path / 'cache'))
    from chainer_finetune import hub
    monkeypatch.setattr(hub, 'default_cache_dir',
                        lambda: os.path.abspath(models_cache))
    values = dict(finetune.DEMO)
    values.update(train_per_class=3, test_per_class=5, epochs=1,
                  input_size=32, compare_scratch=False, out=str(tmp_path))
    result = finetune.run_finetune(finetune.FinetuneConfig(**values))
    run, = result.runs
    assert len(run.log) == 1
    # Every open_nsfw layer up to the feature blob came from the caffemodel.
    assert len(run.copy_report.copied_links) > 50
    assert run.accuracy > 0.2   # 10 classes: chance is 0.1


def test_copy_of_a_caffenet_has_its_own_layer_settings(material):
    model, prototxt, _ = material
    net = load_caffe(model, prototxt)
    twin = net.copy(mode='copy')
    twin.set_global_stats(False)
    twin.set_moving_average_fraction(0.5)
    assert net._functions['bn1'].global_stats is True
    assert net._functions['bn1'].moving_average_fraction == \
        pytest.approx(0.999)
    assert twin._functions['bn1'].moving_average_fraction == 0.5
    # forwards of the copy compute with the copy's parameters.
    twin['conv1'].W.array[...] = 0
    twin['conv1'].b.array[...] = 0
    x = numpy.ones((1, 3, 16, 16), numpy.float32)
    assert not twin.forwards['conv1'](x)[0].array.any()
    assert net.forwards['conv1'](x)[0].array.any()
    # Replacing the head of the copy leaves the original's description.
    chainer_finetune.replace_head(twin, 'fc', 3)
    fc = [layer for layer in net.caffe_layers if layer.name == 'fc'][0]
    assert fc.inner_product_param.num_output == 5
    fc = [layer for layer in twin.caffe_layers if layer.name == 'fc'][0]
    assert fc.inner_product_param.num_output == 3


def test_output_named_by_layer_gets_a_hint(material):
    model, prototxt, _ = material
    net = load_caffe(model, prototxt)
    x = numpy.zeros((1, 3, 16, 16), numpy.float32)
    with pytest.raises(chainer_finetune.CaffeModelError,
                       match="'relu2' is a layer; its output blob is "
                             "'conv2'"):
        net(inputs={'data': x}, outputs=['relu2'])
    with pytest.raises(chainer_finetune.CaffeModelError,
                       match="no blob named 'nothing'"):
        net(inputs={'data': x}, outputs=['nothing'])


def test_multiprocess_loading(material, tmp_path):
    config = _config(material, tmp_path, feature_layer='conv2', epochs=1,
                     loaderjob=2)
    _, train_set, test_set = job_data.load_split(config)
    train, _ = job_data.transformed(config, train_set, test_set)
    # Each worker draws its own crops (a shared seed would repeat them).
    assert train._transform.seed is None
    result = finetune.run_finetune(config)
    assert len(result.runs[0].log) == 1


def test_each_run_draws_the_same_crops(material, tmp_path):
    config = _config(material, tmp_path, feature_layer='conv2')
    _, train_set, test_set = job_data.load_split(config)
    first, _ = job_data.transformed(config, train_set, test_set)
    second, _ = job_data.transformed(config, train_set, test_set)
    crops = [first[i][0] for i in range(6)]
    for i in range(6):
        numpy.testing.assert_array_equal(second[i][0], crops[i])
    # The crops are random: one image drawn again and again varies.
    draws = {first[0][0].tobytes() for _ in range(10)}
    assert len(draws) > 1


# --------------------------------------------------------------------------
# The job's structure: one error class, a known model's declarations, the
# source located once.
# --------------------------------------------------------------------------

def test_finetune_error_lives_in_errors():
    from chainer_finetune import errors
    assert finetune.FinetuneError is errors.FinetuneError
    assert issubclass(errors.FinetuneError, errors.ChainerFinetuneError)
    assert issubclass(errors.FinetuneError, ValueError)


@pytest.fixture
def known_tiny(tmp_path, monkeypatch):
    """'tiny' registered as a known model; fetch_model counts its calls and
    serves a generated net."""
    from chainer_finetune import hub
    model, prototxt = _write_net(str(tmp_path), aux=True)
    member = hub.WheelMember('tiny/x', 'x', '0' * 64)
    monkeypatch.setitem(hub.MODELS, 'tiny', hub.KnownModel(
        name='tiny', requirement='tiny==0', wheel='tiny-0.whl',
        wheel_sha256='0' * 64, caffemodel=member, prototxt=member,
        mean_bgr=(10.0, 20.0, 30.0), input_size=12, input_blob='data',
        feature_blob='pool', classifier_layer='fc'))
    calls = []

    def fetch_model(name, *args, **kwargs):
        calls.append(name)
        return hub.ModelFiles(model, prototxt)

    monkeypatch.setattr(hub, 'fetch_model', fetch_model)
    return calls


def test_known_model_declarations_are_used(material, tmp_path, known_tiny):
    config = _config(material, tmp_path, caffemodel='tiny', prototxt=None,
                     input_size=None)
    source = finetune.resolve_source(config)
    assert known_tiny == ['tiny']
    assert (source.name, source.declared('feature_blob')) == ('tiny', 'pool')
    assert source.prototxt.endswith('small.prototxt')
    model, _ = finetune.build_classifier(config, N_CLASS, True, source)
    # The declared classifier 'fc' is replaced, not the last InnerProduct.
    assert (model.replaced_layer, model.output) == ('fc', 'fc')
    assert model.input_name == 'data'
    assert model.backbone['fc'].W.shape == (N_CLASS, 8)
    assert model.backbone['aux'].W.shape == (2, 5)
    # The declared mean and input size reach the preprocessing.
    _, test_prep = job_data.preprocessors(config, source)
    numpy.testing.assert_array_equal(test_prep.mean.ravel(), [10, 20, 30])
    _, train_set, test_set = job_data.load_split(config)
    train, test = job_data.transformed(config, train_set, test_set, source)
    assert train[0][0].shape == test[0][0].shape == (3, 12, 12)
    # A pooled-feature head on the declared feature blob.
    config = _config(material, tmp_path, caffemodel='tiny', prototxt=None,
                     feature_layer=source.declared('feature_blob'))
    model, _ = finetune.build_classifier(config, N_CLASS, True, source)
    assert model.has_head and model.output == 'pool'
    # The configuration's explicit values win over the declaration.
    train, _ = job_data.transformed(config, train_set, test_set, source)
    assert train[0][0].shape == (3, 16, 16)


def test_own_model_falls_back_to_imagenet_mean_and_last_inner_product(
        material, tmp_path, caplog):
    config = _config(material, tmp_path, input_size=None)
    with caplog.at_level('INFO', logger='chainer_finetune.finetune'):
        source = finetune.resolve_source(config)
    assert source.known is None and source.caffemodel == config.caffemodel
    assert 'ImageNet mean' in caplog.text
    _, test_prep = job_data.preprocessors(config, source)
    numpy.testing.assert_array_equal(test_prep.mean.ravel(),
                                     finetune.IMAGENET_MEAN_BGR)
    assert test_prep.resize == (finetune.DEFAULT_INPUT_SIZE,) * 2
    model, _ = finetune.build_classifier(config, N_CLASS, True, source)
    assert (model.replaced_layer, model.input_name) == ('fc', 'data')


def test_a_job_locates_a_known_model_once(material, tmp_path, known_tiny):
    config = _config(material, tmp_path, caffemodel='tiny', prototxt=None,
                     compare_scratch=True, lr_mult_from_prototxt=True,
                     freeze=['*'])
    result = finetune.run_finetune(config)
    assert known_tiny == ['tiny']
    assert [(r.name, r.pretrained) for r in result.runs] == [
        ('pretrained', True), ('scratch', False)]
    pretrained, scratch = result.runs
    # The declared classifier is new: not frozen by the catch-all.
    assert set(pretrained.frozen) == {'conv1', 'bn1', 'scale1', 'conv2',
                                      'aux'}
    assert scratch.frozen == [] and scratch.copy_report is None
    report = open(result.report_path, encoding='utf-8').read()
    assert '- model: `tiny` (prototxt `small.prototxt`)' in report


@pytest.mark.network
def test_open_nsfw_declaration_matches_its_prototxt(monkeypatch):
    """The declared blobs and layer exist in the real deploy.prototxt."""
    from chainer_finetune import hub
    from chainer_finetune.caffe.reader import read_prototxt
    models_cache = os.path.join(os.path.dirname(__file__), '..', '.cache',
                                'models')
    monkeypatch.setattr(hub, 'default_cache_dir',
                        lambda: os.path.abspath(models_cache))
    known = hub.MODELS['open_nsfw']
    net = read_prototxt(hub.fetch_model('open_nsfw').prototxt)
    data, = [layer for layer in net.layer if layer.type == 'Input']
    assert list(data.top) == [known.input_blob]
    assert list(data.input_param.shape[0].dim[2:]) == [known.input_size] * 2
    inner = [layer for layer in net.layer if layer.type == 'InnerProduct']
    assert inner[-1].name == known.classifier_layer
    pool, = [layer for layer in net.layer if layer.name == 'pool']
    assert pool.type == 'Pooling' and list(pool.top) == [known.feature_blob]
    assert list(inner[-1].bottom) == [known.feature_blob]
    assert known.mean_bgr == finetune.IMAGENET_MEAN_BGR


@pytest.mark.network
@pytest.mark.slow
def test_detector_backbone_beats_scratch_on_digits(tmp_path, monkeypatch):
    """MobileNet-SSD cut at its last backbone layer, conv13 (depthwise
    convolutions, frozen), with a new head: the pretrained features beat
    the same net from scratch (measured: 0.583 against 0.297)."""
    models_cache = os.path.join(os.path.dirname(__file__), '..', '.cache',
                                'models')
    from chainer_finetune import hub
    monkeypatch.setattr(hub, 'default_cache_dir',
                        lambda: os.path.abspath(models_cache))
    config = finetune.FinetuneConfig(
        caffemodel='mobilenet_ssd_voc', data='digits', feature_layer='conv13',
        input_size=64, train_per_class=10, test_per_class=30, epochs=6,
        augment='crop', compare_scratch=True, out=str(tmp_path))
    result = finetune.run_finetune(config)
    pretrained, scratch = result.runs
    assert pretrained.pretrained and not scratch.pretrained
    # Every backbone convolution came from the caffemodel, and the
    # declared input scale (1/127.5 after the mean 127.5) was used.
    assert {'backbone/conv0', 'backbone/conv13_dw', 'backbone/conv13'} <= \
        set(pretrained.copy_report.copied_links)
    _, test_prep = job_data.preprocessors(
        config, finetune.resolve_source(config))
    assert test_prep.scale == pytest.approx(0.007843)
    assert pretrained.accuracy > scratch.accuracy + 0.1
