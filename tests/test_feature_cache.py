"""The feature cache of a fine-tuning run (--feature-cache): the same run,
to the bit, with the frozen backbone computed once per image."""

import logging
import os

import numpy
import pytest

from chainer_finetune import finetune
from chainer_finetune.errors import FinetuneError
from chainer_finetune.finetune import feature_cache

from test_finetune import _config
from test_finetune import material  # noqa: F401  (fixture)
from test_finetune import own_cache  # noqa: F401  (fixture)


def _run(material, tmp_path, name, **kwargs):
    values = dict(feature_layer='conv2', augment='none', epochs=3,
                  out=str(tmp_path / name))
    values.update(kwargs)
    return finetune.run_finetune(_config(material, tmp_path, **values))


def _log_values(run, key):
    return [entry[key] for entry in run.log]


@pytest.mark.parametrize('mode', ['ram', 'disk', 'auto'])
def test_cached_run_is_the_uncached_run(material, tmp_path, caplog, mode):
    caplog.set_level(logging.INFO)
    plain, = _run(material, tmp_path, 'plain', feature_cache='off').runs
    assert 'feature cache off: turned off' in caplog.text
    caplog.clear()
    cached, = _run(material, tmp_path, 'cached', feature_cache=mode).runs
    expected = 'ram' if mode == 'auto' else mode
    assert 'feature cache on ({})'.format(expected) in caplog.text
    for key in ('validation/main/accuracy', 'validation/main/loss',
                'main/loss', 'main/accuracy'):
        assert _log_values(cached, key) == _log_values(plain, key), key
    assert cached.accuracy == plain.accuracy
    # The snapshot is the whole model (backbone and head), as without.
    a = numpy.load(os.path.join(plain.out, 'best_model.npz'))
    b = numpy.load(os.path.join(cached.out, 'best_model.npz'))
    assert sorted(a.files) == sorted(b.files)
    assert any(k.startswith('backbone/') for k in b.files)
    for key in a.files:
        numpy.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # On-disk features are removed with the run.
    assert not os.path.exists(os.path.join(cached.out,
                                           feature_cache.CACHE_DIR))


@pytest.mark.parametrize('kwargs, reason', [
    (dict(augment='crop'), 'random augmentation (--augment crop)'),
    (dict(freeze=['conv1']), 'backbone layers still train (conv2'),
    (dict(unfreeze_at=1), 'layers are unfrozen at epoch 1'),
    (dict(feature_layer=None), "the net's own classifier layer"),
])
def test_cache_is_off_where_it_would_change_the_run(material, tmp_path,
                                                    caplog, kwargs, reason):
    caplog.set_level(logging.INFO)
    _run(material, tmp_path, 'run', epochs=1, **kwargs)
    assert 'feature cache off: ' + reason in caplog.text
    assert 'feature cache on' not in caplog.text


def test_unknown_mode_is_a_finetune_error(material, tmp_path):
    with pytest.raises(FinetuneError, match='feature_cache must be one of'):
        _run(material, tmp_path, 'run', epochs=1, feature_cache='gpu')


def test_features_do_not_depend_on_the_batch(material, tmp_path):
    """Each image's feature is the same whichever batch it is computed in
    (what makes the cached and uncached runs agree to the bit)."""
    import chainer
    config = _config(material, tmp_path, feature_layer='conv2',
                     augment='none')
    model, _ = finetune.build_classifier(config, 3, True)
    rng = numpy.random.RandomState(0)
    x = rng.uniform(-50, 50, (7, 3, 16, 16)).astype(numpy.float32)
    with chainer.no_backprop_mode():
        whole = feature_cache.pooled_features(model, x)
        alone = numpy.concatenate([feature_cache.pooled_features(
            model, x[i:i + 1]) for i in range(7)])
    numpy.testing.assert_array_equal(whole, alone)
