"""Predicting with a fine-tuned model (chainer_finetune.predict, the
``model.json`` that finetune writes, ``chainer-finetune predict``): on a
small generated Caffe net and image folder, and on the real demo (open_nsfw
on digits) with a reduced budget, where the held-out accuracy recomputed
from predict's output must be the one the job reported."""

import csv
import io
import json
import os
import re
import shutil

import numpy
import pytest

import chainer_finetune  # noqa: F401  (before chainer)
import chainer  # noqa: E402

from chainer_finetune import cli  # noqa: E402
from chainer_finetune import finetune  # noqa: E402
from chainer_finetune import prediction as pred  # noqa: E402
from chainer_finetune.caffe.writer import write_binaryproto  # noqa: E402
from chainer_finetune.errors import DataError  # noqa: E402
from chainer_finetune.errors import PredictError  # noqa: E402
from chainer_finetune.files import sha256_of  # noqa: E402
from chainer_finetune.finetune import datasets as job_data  # noqa: E402
from test_finetune import _write_net  # noqa: E402
from chainer_finetune.finetune import model_file  # noqa: E402

CLASSES = ['bright', 'dark', 'striped']


def _write_images(root, per_class=6):
    """root/<class>/*.png: bright, dark and striped 20x20 images."""
    from PIL import Image
    rng = numpy.random.RandomState(1)
    for c, name in enumerate(CLASSES):
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            base = numpy.full((20, 20, 3), 200 - 150 * (c == 1),
                              numpy.float64)
            if c == 2:
                base[::4] = 0
            image = numpy.clip(base + rng.randn(20, 20, 3) * 10, 0, 255)
            Image.fromarray(image.astype(numpy.uint8)).save(os.path.join(
                root, name, '{}.png'.format(i)))
    return root


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    # load_caffe(cache=True) writes into the per-user cache: keep tests out.
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(tmp_path / 'cache'))


@pytest.fixture(scope='module')
def job(tmp_path_factory):
    """A finished job with both runs (new head on conv2) and its inputs."""
    directory = str(tmp_path_factory.mktemp('predict'))
    saved = os.environ.get('CHAINER_FINETUNE_CACHE')
    os.environ['CHAINER_FINETUNE_CACHE'] = os.path.join(directory, 'cache')
    try:
        model, prototxt = _write_net(directory)
        images = _write_images(os.path.join(directory, 'images'))
        config = finetune.FinetuneConfig(
            caffemodel=model, prototxt=prototxt, data=images,
            feature_layer='conv2', input_size=16, train_per_class=3,
            test_per_class=3, epochs=3, batchsize=3, compare_scratch=True,
            out=os.path.join(directory, 'out'))
        result = finetune.run_finetune(config)
    finally:
        if saved is None:
            del os.environ['CHAINER_FINETUNE_CACHE']
        else:
            os.environ['CHAINER_FINETUNE_CACHE'] = saved
    _, _, test_set = job_data.load_split(config)
    return config, result, test_set


def _held_out(test_set):
    paths = [test_set.path(i) for i in range(len(test_set))]
    return paths, test_set.labels


def _accuracy(tops, labels, class_names):
    predicted = [class_names.index(top[0][0]) for top in tops]
    return numpy.float32(numpy.mean(numpy.array(predicted) == labels))


def test_each_run_directory_describes_its_model(job):
    config, result, _ = job
    for run in result.runs:
        path = os.path.join(run.out, 'model.json')
        with open(path, encoding='utf-8') as f:
            raw = json.load(f)
        assert raw['format'] == model_file.FORMAT
        assert raw['format_version'] == 1 and raw['run'] == run.name
        assert raw['pretrained'] is run.pretrained
        assert raw['source']['caffemodel'] == os.path.abspath(
            config.caffemodel)
        assert raw['source']['caffemodel_sha256'] == sha256_of(
            config.caffemodel)
        assert raw['source']['known_model'] is None
        assert raw['network'] == {
            'input_blob': 'data', 'output_blob': 'conv2', 'stop_at': 'conv2',
            'new_head': True, 'replaced_layer': None, 'n_class': 3}
        assert raw['class_names'] == CLASSES
        prep = raw['preprocessing']
        assert prep['resize'] == prep['input_size'] == [16, 16]
        assert prep['crop'] is None
        # A model of the user's own without --mean: the ImageNet mean.
        assert prep['mean_bgr'] == list(finetune.IMAGENET_MEAN_BGR)
        assert (prep['image_channel_order'], prep['network_channel_order'],
                prep['scale']) == ('RGB', 'BGR', 1.0)
        info = model_file.read_model_file(path)
        assert info.weights == os.path.join(run.out, 'best_model.npz')
        assert info.input_size == (16, 16)


def test_preprocessing_is_the_jobs_held_out_preprocessing(job):
    config, result, test_set = job
    source = finetune.resolve_source(config)
    _, job_prep = job_data.preprocessors(config, source)
    info = model_file.read_model_file(
        os.path.join(result.runs[0].out, 'model.json'))
    ours = info.preprocessor()
    _, test = job_data.transformed(config, test_set, test_set, source)
    for i in range(len(test_set)):
        image = test_set.image(i)
        numpy.testing.assert_array_equal(ours(image), job_prep(image))
        numpy.testing.assert_array_equal(ours(image), test[i][0])


def test_predict_recomputes_each_runs_best_accuracy(job):
    _, result, test_set = job
    paths, labels = _held_out(test_set)
    for run in result.runs:
        classifier, info = pred.load_classifier(run.out)
        assert info.run == run.name
        tops = pred.predict(classifier, info, paths, top_k=2, batchsize=4)
        assert [len(t) for t in tops] == [2] * len(paths)
        assert _accuracy(tops, labels, CLASSES) == numpy.float32(
            run.best_accuracy)
        # Arrays (as read_image gives) and files give the same numbers, at
        # any batch size up to BLAS's float32 rounding (its matrix products
        # block by batch: 6e-8 measured, with and without the fast path).
        images = [test_set.image(i) for i in range(len(test_set))]
        numpy.testing.assert_allclose(
            pred.class_probabilities(classifier, info, images),
            pred.class_probabilities(classifier, info, paths, batchsize=1),
            rtol=1e-6, atol=1e-7)


def test_loaded_values_are_the_best_models(job):
    _, result, _ = job
    weights = os.path.join(result.runs[0].out, 'best_model.npz')
    classifier, _ = pred.load_classifier(weights)
    with numpy.load(weights) as npz:
        stored = dict(npz)
    loaded = chainer.serializers.DictionarySerializer()
    loaded.save(classifier)
    assert sorted(loaded.target) == sorted(stored)
    for key, value in stored.items():
        numpy.testing.assert_array_equal(loaded.target[key], value,
                                         err_msg=key)


def test_output_directory_means_the_pretrained_run(job):
    _, result, _ = job
    out = os.path.dirname(result.runs[0].out)
    assert pred.locate_model_file(out) == (
        os.path.join(out, 'pretrained', 'model.json'), '', 'pretrained')
    scratch = os.path.join(out, 'scratch')
    assert pred.locate_model_file(scratch)[1:] == ('', None)
    npz = os.path.join(scratch, 'best_model.npz')
    assert pred.locate_model_file(npz) == (
        os.path.join(scratch, 'model.json'), npz, None)
    assert pred.load_classifier(out)[1].run == 'pretrained'
    assert pred.load_classifier(
        os.path.join(scratch, 'model.json'))[1].run == 'scratch'


def test_top_k_is_clamped_to_the_classes_and_ordered():
    probs = numpy.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4]], numpy.float32)
    tops = pred.top_classes(probs, ['a', 'b', 'c'], 10)
    assert tops == [[('b', pytest.approx(0.5)), ('c', pytest.approx(0.3)),
                     ('a', pytest.approx(0.2))],
                    [('a', pytest.approx(0.4)), ('c', pytest.approx(0.4)),
                     ('b', pytest.approx(0.2))]]
    assert pred.top_classes(probs, 'abc', 1) == [[('b', pytest.approx(0.5))],
                                                 [('a', pytest.approx(0.4))]]
    with pytest.raises(PredictError, match='top_k must be at least 1'):
        pred.top_classes(probs, 'abc', 0)


def _predict_cli(capsys, *argv):
    code = cli.main(['predict'] + list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_csv_parses_back(job, capsys):
    _, result, test_set = job
    out = os.path.dirname(result.runs[0].out)
    images = job[0].data
    code, stdout, err = _predict_cli(capsys, '--model', out, '--csv',
                                     '--top-k', '5', '--device', '@numpy',
                                     images)
    assert code == 0, err
    assert 'pretrained' in err   # says which run it took
    rows = list(csv.reader(io.StringIO(stdout)))
    assert rows[0] == ['path', 'rank', 'label', 'probability']
    files = pred.find_images([images])
    assert len(files) == 18
    # k 5 > 3 classes: every class once per image, probabilities summing
    # to 1, most probable first.
    assert len(rows) == 1 + 3 * len(files)
    for i, path in enumerate(files):
        mine = rows[1 + 3 * i: 4 + 3 * i]
        assert [r[0] for r in mine] == [path] * 3
        assert [r[1] for r in mine] == ['1', '2', '3']
        assert sorted(r[2] for r in mine) == sorted(CLASSES)
        probs = [float(r[3]) for r in mine]
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)
    # The held-out rows give the run's best accuracy.
    paths, labels = _held_out(test_set)
    best = {r[0]: r[2] for r in rows[1:] if r[1] == '1'}
    predicted = numpy.array([CLASSES.index(best[p]) for p in paths])
    assert numpy.float32(numpy.mean(predicted == labels)) == numpy.float32(
        result.runs[0].best_accuracy)


def test_cli_text_lines(job, capsys):
    _, result, test_set = job
    paths, _ = _held_out(test_set)
    code, stdout, err = _predict_cli(capsys, '--model', result.runs[1].out,
                                     '--top-k', '2', *paths[:2])
    assert code == 0, err
    lines = stdout.splitlines()
    assert len(lines) == 2
    pattern = r'^{}: (\S+) \((0\.\d{{4}}|1\.0000)\), (\S+) \(0\.\d{{4}}\)$'
    for path, line in zip(paths, lines):
        match = re.match(pattern.format(re.escape(path)), line)
        assert match, line
        assert match.group(1) in CLASSES and match.group(3) in CLASSES


def test_replaced_head_round_trip(job, tmp_path):
    config, _, test_set = job
    values = dict(vars(config))
    values.update(feature_layer=None, compare_scratch=False, epochs=2,
                  out=str(tmp_path / 'replaced'))
    result = finetune.run_finetune(finetune.FinetuneConfig(**values))
    run, = result.runs
    classifier, info = pred.load_classifier(str(tmp_path / 'replaced'))
    assert (info.new_head, info.replaced_layer) == (False, 'fc')
    assert classifier.backbone['fc'].W.shape == (3, 8)
    paths, labels = _held_out(test_set)
    tops = pred.predict(classifier, info, paths, top_k=1)
    assert _accuracy(tops, labels, CLASSES) == numpy.float32(
        run.best_accuracy)


def test_mean_file_is_recorded_and_checked(job, tmp_path):
    config, _, test_set = job
    mean = str(tmp_path / 'mean.binaryproto')
    rng = numpy.random.RandomState(3)
    write_binaryproto(mean, (rng.rand(1, 3, 16, 16) * 255).astype(
        numpy.float32))
    values = dict(vars(config))
    values.update(mean=mean, compare_scratch=False, epochs=1,
                  out=str(tmp_path / 'mean'))
    finetune.run_finetune(finetune.FinetuneConfig(**values))
    run_dir = str(tmp_path / 'mean' / 'pretrained')
    info = model_file.read_model_file(os.path.join(run_dir, 'model.json'))
    assert (info.mean_bgr, info.mean_file) == (None, mean)
    _, job_prep = job_data.preprocessors(
        finetune.FinetuneConfig(**values), finetune.resolve_source(config))
    image = test_set.image(0)
    numpy.testing.assert_array_equal(info.preprocessor()(image),
                                     job_prep(image))
    write_binaryproto(mean, numpy.zeros((1, 3, 16, 16), numpy.float32))
    with pytest.raises(PredictError, match='mean file changed since'):
        pred.load_classifier(run_dir)[1].preprocessor()


# Errors: each a PredictError (or DataError) naming the file.

def test_not_a_result(tmp_path):
    with pytest.raises(PredictError, match='not a fine-tuning result'):
        pred.load_classifier(str(tmp_path))
    with pytest.raises(PredictError, match='no such file or directory'):
        pred.load_classifier(str(tmp_path / 'nothing'))


def test_weights_without_model_json(job, tmp_path):
    _, result, _ = job
    os.makedirs(str(tmp_path / 'old' / 'pretrained'))
    shutil.copy(os.path.join(result.runs[0].out, 'best_model.npz'),
                str(tmp_path / 'old' / 'pretrained'))
    with pytest.raises(PredictError, match='holds a best_model.npz but no '
                                           'model.json'):
        pred.load_classifier(str(tmp_path / 'old'))
    npz = str(tmp_path / 'old' / 'pretrained' / 'best_model.npz')
    with pytest.raises(PredictError, match=re.escape(
            os.path.join(str(tmp_path), 'old', 'pretrained', 'model.json')) +
            ': not found'):
        pred.load_classifier(npz)


def _copied_run(job, tmp_path, edit=None, text=None):
    _, result, _ = job
    run = str(tmp_path / 'run')
    shutil.copytree(result.runs[0].out, run)
    path = os.path.join(run, 'model.json')
    if text is not None:
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)
    if edit is not None:
        with open(path, encoding='utf-8') as f:
            raw = json.load(f)
        edit(raw)
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(raw, f)
    return run, path


@pytest.mark.parametrize('text, message', [
    ('{"format": "chainer_finetune.finetuned_classifier", ',
     'not valid JSON'),
    ('\xff\xfe garbage', 'not valid JSON'),
    ('[1, 2]', 'not a chainer_finetune model description'),
    ('{"format": "other"}', 'not a chainer_finetune model description'),
])
def test_garbage_model_json(job, tmp_path, text, message):
    run, path = _copied_run(job, tmp_path, text=text)
    with pytest.raises(PredictError, match=re.escape(path) + ': ' + message):
        pred.load_classifier(run)


def _drop(*keys):
    def edit(raw):
        d = raw
        for key in keys[:-1]:
            d = d[key]
        del d[keys[-1]]
    return edit


def _set(value, *keys):
    def edit(raw):
        d = raw
        for key in keys[:-1]:
            d = d[key]
        d[keys[-1]] = value
    return edit


@pytest.mark.parametrize('edit, message', [
    (_drop('network', 'output_blob'), "no 'network.output_blob' entry"),
    (_set('3', 'network', 'n_class'), "'network.n_class' is '3'; expected "
                                      'an integer'),
    (_set(True, 'network', 'n_class'), "'network.n_class' is True"),
    (_set(['a', 'b'], 'class_names'), '"class_names" must be 3 strings'),
    (_set([16], 'preprocessing', 'resize'),
     "'preprocessing.resize' is \\[16\\]; expected \\[height, width\\]"),
    (_set(2, 'format_version'), 'format_version 2 .* reads 1 to 1'),
    (_set('../x.npz', 'weights'), '"weights" must be a file name beside '
                                  'it'),
    (_set('fc', 'network', 'replaced_layer'), 'a network has either a new '
                                              'head or a replaced layer, '
                                              'not both'),
])
def test_model_json_entries_are_checked(job, tmp_path, edit, message):
    run, path = _copied_run(job, tmp_path, edit=edit)
    with pytest.raises(PredictError, match=re.escape(path) + ': ' + message):
        pred.load_classifier(run)


def test_weights_that_do_not_match(job, tmp_path):
    _, result, _ = job
    # A head for 4 classes: the weights have 3.
    run, path = _copied_run(job, tmp_path, edit=lambda raw: (
        raw['network'].update(n_class=4),
        raw.update(class_names=CLASSES + ['extra'])))
    npz = os.path.join(run, 'best_model.npz')
    with pytest.raises(PredictError, match=re.escape(npz) + ': does not '
                       'hold the weights .*head/W has shape \\(3, 8\\), '
                       'expected \\(4, 8\\)'):
        pred.load_classifier(run)
    with open(npz, 'wb') as f:
        f.write(b'not a zip')
    with pytest.raises(PredictError, match=re.escape(npz) +
                       ': not a readable NPZ weights file'):
        pred.load_classifier(run)
    os.remove(npz)
    with pytest.raises(PredictError, match=re.escape(npz) + ': not found'):
        pred.load_classifier(run)


def test_changed_source_model_is_refused(job, tmp_path):
    config, result, _ = job
    run, path = _copied_run(job, tmp_path)
    other, _ = _write_net(str(tmp_path), seed=1)   # same shapes
    with open(path, encoding='utf-8') as f:
        raw = json.load(f)
    raw['source']['caffemodel'] = other
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(raw, f)
    with pytest.raises(PredictError, match=re.escape(other) + ': the '
                       'caffemodel changed since ' + re.escape(path)):
        pred.load_classifier(run)
    os.remove(other)
    with pytest.raises(PredictError, match=re.escape(other) + ': not found'):
        pred.load_classifier(run)


def test_cli_errors_are_one_line(job, tmp_path, capsys):
    _, result, test_set = job
    paths, _ = _held_out(test_set)
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not a png')
    (tmp_path / 'empty').mkdir()
    cases = [
        (['--model', str(tmp_path), paths[0]], 'not a fine-tuning result'),
        (['--model', result.runs[0].out, paths[0], str(bad)],
         '1 of 2 image files cannot be decoded: {}: cannot decode'.format(
             bad)),
        (['--model', result.runs[0].out, str(tmp_path / 'none.png')],
         'none.png: no such file or directory'),
        (['--model', result.runs[0].out, str(tmp_path / 'empty')],
         'empty: no image files'),
    ]
    for argv, message in cases:
        code, stdout, err = _predict_cli(capsys, *argv)
        assert code == 2 and stdout == ''
        assert len(err.strip().splitlines()) == 1, err
        assert message in err, err
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(['predict', '--model', 'x',
                                       '--top-k', '0', 'a.png'])


def test_find_images_walks_directories_sorted(tmp_path):
    for rel in ['b/2.PNG', 'b/1.jpg', 'a.png', '.hidden/x.png', 'b/.y.png',
                'b/notes.txt', 'c/d/e.bmp']:
        path = tmp_path / 'root' / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'')
    root = str(tmp_path / 'root')
    single = str(tmp_path / 'root' / 'b' / 'notes.txt')
    assert pred.find_images([single, root]) == [single] + [
        os.path.join(root, rel) for rel in
        ['a.png', 'b/1.jpg', 'b/2.PNG', 'c/d/e.bmp']]


def test_check_image_files_lists_every_bad_file(tmp_path):
    a, b = tmp_path / 'a.png', tmp_path / 'b.jpg'
    a.write_bytes(b'x')
    b.write_bytes(b'y')
    with pytest.raises(DataError, match='2 of 2 image files cannot be '
                       'decoded: .*a.png: .*; .*b.jpg'):
        pred.check_image_files([str(a), str(b)])


def _write_digits(test_set, root):
    """The held-out digits as PNG files root/<label>/<index>.png (8-bit
    grayscale: read back as the very pixels the job evaluated)."""
    from PIL import Image
    for i in range(len(test_set)):
        directory = os.path.join(root, test_set.class_names[
            test_set.labels[i]])
        os.makedirs(directory, exist_ok=True)
        Image.fromarray(test_set.image(i)[:, :, 0]).save(
            os.path.join(directory, '{:04d}.png'.format(i)))
    return root


@pytest.mark.network
@pytest.mark.slow
def test_predict_on_the_demo_recomputes_its_accuracy(tmp_path, monkeypatch,
                                                     capsys):
    """The README's demo (open_nsfw fine-tuned on digits) with a reduced
    budget: predict on its held-out digits, through the CLI and Python,
    gives the accuracy its report states for each run's best model."""
    models_cache = os.path.join(os.path.dirname(__file__), '..', '.cache',
                                'models')
    from chainer_finetune import hub
    monkeypatch.setattr(hub, 'default_cache_dir',
                        lambda: os.path.abspath(models_cache))
    values = dict(finetune.DEMO)
    values.update(train_per_class=3, test_per_class=5, epochs=2,
                  input_size=32, out=str(tmp_path / 'result'))
    config = finetune.FinetuneConfig(**values)
    result = finetune.run_finetune(config)
    _, _, test_set = job_data.load_split(config)
    digits = _write_digits(test_set, str(tmp_path / 'held_out'))
    with open(result.report_path, encoding='utf-8') as f:
        report = f.read()
    for run in result.runs:
        code, stdout, err = _predict_cli(
            capsys, '--model', str(tmp_path / 'result') if run.pretrained
            else run.out, '--csv', '--top-k', '3', digits)
        assert code == 0, err
        rows = list(csv.DictReader(io.StringIO(stdout)))
        assert len(rows) == 3 * len(test_set) == 150
        top1 = [r for r in rows if r['rank'] == '1']
        # The true class is the directory the file is in.
        correct = sum(r['label'] == os.path.basename(os.path.dirname(
            r['path'])) for r in top1)
        recomputed = correct / len(top1)
        assert numpy.float32(recomputed) == numpy.float32(run.best_accuracy)
        # The report's "best (epoch)" cell states that same number.
        assert '| {} | {:.3f} | {:.3f} ({}) |'.format(
            run.name, run.accuracy, recomputed, run.best_epoch) in report
        # Python: the same classes from the in-memory images.
        classifier, info = pred.load_classifier(run.out)
        assert info.known_model == 'open_nsfw'
        images = [test_set.image(i) for i in range(len(test_set))]
        tops = pred.predict(classifier, info, images, top_k=1)
        assert _accuracy(tops, test_set.labels,
                         list(info.class_names)) == numpy.float32(recomputed)


def test_package_exports():
    assert chainer_finetune.load_classifier is pred.load_classifier
    assert chainer_finetune.predict is pred.predict


def _job_scores(job, n=3):
    """The job's first ``n`` held-out images as its classifier's input, and
    the class scores the classifier computes for them."""
    from chainer_finetune import data
    config, _, test_set = job
    classifier, info = pred.load_classifier(config.out)
    paths, _ = _held_out(test_set)
    x = numpy.stack([info.preprocessor()(data.read_image(p))
                     for p in paths[:n]])
    with chainer.using_config('train', False):
        return x, classifier(x).array


def test_export_caffe_of_the_jobs_result(job, tmp_path, capsys):
    # `export --model RESULT` writes the fine-tuned classifier (backbone cut
    # at conv2, new pooled head); load_caffe and OpenCV run the files on
    # the held-out images as the job's classifier does.
    cv2 = pytest.importorskip('cv2')
    from chainer_finetune import load_caffe
    from chainer_finetune.caffe.verify import compare_arrays
    config = job[0]
    out = str(tmp_path / 'deploy')
    assert cli.main(['export', '--format', 'caffe', '--model', config.out,
                     '-o', out]) == 0
    assert 'wrote ' + out + '.prototxt' in capsys.readouterr().out
    x, want = _job_scores(job)
    net = load_caffe(out + '.caffemodel', out + '.prototxt')
    with chainer.using_config('train', False):
        got, = net(inputs={'data': x}, outputs=['head'])
    assert numpy.abs(got.array.reshape(want.shape) - want).max() <= 1e-6
    reference = cv2.dnn.readNetFromCaffe(out + '.prototxt',
                                         out + '.caffemodel')
    reference.setInput(x)
    opencv = reference.forward()
    assert compare_arrays(opencv.reshape(want.shape), want)[1] <= 1e-5
    # A second export refuses to replace the files.
    assert cli.main(['export', '--format', 'caffe', '--model', config.out,
                     '-o', out]) == 2


def test_export_onnx_of_the_jobs_result(job, tmp_path, capsys):
    # `export --format onnx --model RESULT`: one file whose batch is free,
    # run by onnxruntime at batch 1 and 3 as the job's classifier computes.
    ort = pytest.importorskip('onnxruntime')
    config = job[0]
    out = str(tmp_path / 'digits')
    assert cli.main(['export', '--format', 'onnx', '--model', config.out,
                     '-o', out]) == 0
    assert 'batch free' in capsys.readouterr().out
    x, want = _job_scores(job)
    session = ort.InferenceSession(out + '.onnx',
                                   providers=['CPUExecutionProvider'])
    for batch in (1, 3):
        got, = session.run(None, {'input': x[:batch]})
        assert numpy.abs(got - want[:batch]).max() <= 1e-5
    # The Caffe-only and ONNX-only options are refused with the other.
    assert cli.main(['export', '--format', 'caffe', '--model', config.out,
                     '--batch', '2', '-o', str(tmp_path / 'x')]) == 2
    assert '--format onnx' in capsys.readouterr().err
