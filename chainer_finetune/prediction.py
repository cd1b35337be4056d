"""Classifying images with a model fine-tuned by ``chainer-finetune finetune``.

:func:`load_classifier` rebuilds a run's classifier from what the job
wrote (its ``model.json`` and ``best_model.npz``, see
:mod:`chainer_finetune.finetune.model_file`); :func:`predict` gives the
top-k classes of images with their probabilities, preprocessed exactly as
the job preprocessed its held-out images (guide: :doc:`/deploy`)::

    from chainer_finetune import load_classifier, predict

    classifier, info = load_classifier('result')      # the pretrained run
    for path, top in zip(paths, predict(classifier, info, paths, top_k=3)):
        print(path, top)                               # [('7', 0.93), ...]
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import chainer
import chainer.functions as F
import numpy

from chainer_finetune import data
from chainer_finetune import hub
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.errors import DataError
from chainer_finetune.errors import PredictError
from chainer_finetune.finetune.config import MODEL_FILE
from chainer_finetune.finetune.config import RUN_NAMES
from chainer_finetune.finetune.config import WEIGHTS_FILE
from chainer_finetune.finetune.model import CaffeClassifier
from chainer_finetune.finetune.model_file import check_unchanged
from chainer_finetune.finetune.model_file import ModelFile
from chainer_finetune.finetune.model_file import read_model_file
from chainer_finetune.head import replace_head

logger = logging.getLogger(__name__)

PathLike = Union[str, 'os.PathLike[str]']

#: An image: a file, or an ``(H, W)`` / ``(H, W, 3)`` array (RGB, 0-255).
Image = Union[PathLike, numpy.ndarray]


def locate_model_file(path: PathLike) -> Tuple[str, str, Optional[str]]:
    """The ``model.json`` and weights that ``path`` names.

    ``path`` may be a job's output directory (its pretrained run is
    taken), a run directory, a ``model.json``, or a weights file with a
    ``model.json`` beside it.

    Returns:
        tuple: ``(model_json, weights, picked_run)``; ``picked_run`` is the
        run chosen inside an output directory, else None.

    Raises:
        PredictError: ``path`` is none of those.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path):
        if os.path.basename(path) == MODEL_FILE:
            return path, '', None
        return os.path.join(os.path.dirname(path), MODEL_FILE), path, None
    if not os.path.isdir(path):
        raise PredictError('{}: no such file or directory; expected a '
                           'result directory of chainer-finetune finetune, '
                           'one of its run directories or a {}'.format(
                               path, WEIGHTS_FILE))
    if os.path.isfile(os.path.join(path, MODEL_FILE)):
        return os.path.join(path, MODEL_FILE), '', None
    run = os.path.join(path, RUN_NAMES[0])
    if os.path.isfile(os.path.join(run, MODEL_FILE)):
        return os.path.join(run, MODEL_FILE), '', RUN_NAMES[0]
    if any(os.path.isfile(os.path.join(d, WEIGHTS_FILE))
           for d in (path, run)):
        raise PredictError(
            '{}: holds a {} but no {}: written before finetune described '
            'its models; run the job again to predict with it'.format(
                path, WEIGHTS_FILE, MODEL_FILE))
    raise PredictError('{}: not a fine-tuning result: no {} in it or in '
                       'its {}/ directory (chainer-finetune finetune writes '
                       'them)'.format(path, MODEL_FILE, RUN_NAMES[0]))


def _source_files(info: ModelFile) -> Tuple[str, Optional[str]]:
    """The caffemodel and prototxt of the run's source, checked unchanged
    (a known model is located, fetched if need be, as the job did)."""
    caffemodel, prototxt = info.caffemodel, info.prototxt
    if info.known_model is not None:
        caffemodel, prototxt, _ = hub.locate_model(
            info.known_model, info.prototxt if info.prototxt_given else None)
    check_unchanged(caffemodel, info.caffemodel_sha256, info.path,
                    'caffemodel')
    if prototxt is not None:
        check_unchanged(prototxt, info.prototxt_sha256, info.path,
                        'prototxt')
    return caffemodel, prototxt


def build_from_model_file(info: ModelFile) -> CaffeClassifier:
    """The run's classifier with untrained values in its new layers (the
    architecture only; :func:`load_classifier` loads the weights).

    Raises:
        PredictError: The source model is gone or changed.
        CaffeModelError: It cannot be loaded.
    """
    caffemodel, prototxt = _source_files(info)
    backbone = load_caffe(caffemodel, prototxt, stop_at=info.stop_at,
                          cache=True)
    if info.new_head:
        model = CaffeClassifier(backbone, info.input_blob, info.output_blob,
                                info.n_class)
    else:
        replace_head(backbone, info.replaced_layer, info.n_class, seed=0)
        model = CaffeClassifier(backbone, info.input_blob, info.output_blob,
                                replaced_layer=info.replaced_layer)
    # The new head's input size is set by a first batch, as in training.
    x = numpy.zeros((1, 3) + tuple(info.input_size), numpy.float32)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        model(x)
    return model


def _read_weights(path: str, info: ModelFile) -> Dict[str, numpy.ndarray]:
    if not os.path.isfile(path):
        raise PredictError('{}: not found; {} describes the weights of its '
                           'run directory'.format(path, info.path))
    try:
        with numpy.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as e:   # zipfile, pickle and format errors alike
        raise PredictError('{}: not a readable NPZ weights file ({}: {})'
                           .format(path, type(e).__name__, e)) from e


def _check_weights(model: chainer.Link, arrays: Dict[str, numpy.ndarray],
                   path: str, info: ModelFile) -> None:
    """Every value of ``model`` in ``arrays`` with its shape, nothing else
    (NPZ loading would broadcast a wrong shape or ignore extra values)."""
    wanted = chainer.serializers.DictionarySerializer()
    wanted.save(model)
    expected = {k: numpy.shape(v) for k, v in wanted.target.items()}
    problems = ['missing {}'.format(k) for k in sorted(expected)
                if k not in arrays]
    problems += ['unexpected {}'.format(k) for k in sorted(arrays)
                 if k not in expected]
    problems += ['{} has shape {}, expected {}'.format(
        k, arrays[k].shape, expected[k]) for k in sorted(expected)
        if k in arrays and arrays[k].shape != expected[k]]
    if problems:
        shown = '; '.join(problems[:5])
        raise PredictError('{}: does not hold the weights of the classifier '
                           '{} describes: {}{}'.format(
                               path, info.path, shown,
                               ' (and {} more)'.format(len(problems) - 5)
                               if len(problems) > 5 else ''))


def load_classifier(path: PathLike, device: Any = None
                    ) -> Tuple[CaffeClassifier, ModelFile]:
    """Rebuilds a fine-tuned classifier from what ``finetune`` wrote.

    Args:
        path: The job's output directory (its pretrained run is taken), a
            run directory (``result/scratch``), its ``model.json``, or a
            weights file with a ``model.json`` beside it.
        device: A Chainer device (``'@numpy'``, ``'@cupy:0'``); None: the
            CPU.

    Returns:
        tuple: ``(classifier, info)``: the
        :class:`~chainer_finetune.finetune.CaffeClassifier` with the run's
        best weights (it returns class scores; call it under
        ``chainer.using_config('train', False)``), and its
        :class:`~chainer_finetune.finetune.model_file.ModelFile`.

    Raises:
        PredictError: No result at ``path``; a missing, corrupt or newer
            ``model.json``; weights that do not match it; a source model
            that is gone or changed (each message names the file).
    """
    model_json, weights, picked = locate_model_file(path)
    if picked is not None:
        logger.info('%s: using the %s run', path, picked)
    info = read_model_file(model_json)
    weights = weights or info.weights
    arrays = _read_weights(weights, info)
    model = build_from_model_file(info)
    _check_weights(model, arrays, weights, info)
    chainer.serializers.NpzDeserializer(arrays).load(model)
    device = chainer.get_device(device if device is not None else '@numpy')
    device.use()
    model.to_device(device)
    return model, info


def find_images(paths: Sequence[PathLike]) -> List[str]:
    """The image files among ``paths``, directories walked.

    A file is taken as it is; a directory gives its image files
    (:data:`~chainer_finetune.data.IMAGE_EXTENSIONS`, any case) at any
    depth, hidden entries skipped, sorted by path.

    Raises:
        PredictError: A path that does not exist, or a directory without
            image files.
    """
    found: List[str] = []
    for item in map(os.fspath, paths):
        if os.path.isfile(item):
            found.append(item)
            continue
        if not os.path.isdir(item):
            raise PredictError('{}: no such file or directory'.format(item))
        inside = []
        for root, dirs, files in os.walk(item):
            dirs[:] = [d for d in dirs if not d.startswith('.')]
            inside += [os.path.join(root, f) for f in files
                       if not f.startswith('.') and os.path.splitext(f)[1]
                       .lower() in data.IMAGE_EXTENSIONS]
        if not inside:
            raise PredictError('{}: no image files ({}) in it'.format(
                item, ', '.join(data.IMAGE_EXTENSIONS)))
        found += sorted(inside)
    return found


def check_image_files(paths: Sequence[str], processes: int = 0) -> None:
    """Decodes every file once, before a model runs on any.

    Raises:
        DataError: Files that cannot be decoded, all listed with their
            reasons.
    """
    images = data.ImageSet.from_files(paths, [0] * len(paths), ['?'],
                                      name='images')
    bad = data.find_bad_images(images, processes)
    if bad:
        raise DataError('{} of {} image file{} cannot be decoded: {}'
                             .format(len(bad), len(paths),
                                     '' if len(paths) == 1 else 's',
                                     '; '.join(m for _, m in bad)))


def class_probabilities(classifier: CaffeClassifier, info: ModelFile,
                        images: Sequence[Image], batchsize: int = 16
                        ) -> numpy.ndarray:
    """The softmax of the classifier's scores for each image.

    Images are files (decoded by :func:`chainer_finetune.data.read_image`)
    or arrays, preprocessed by ``info.preprocessor()`` (the job's held-out
    preprocessing) and run in inference mode, ``batchsize`` at a time, on
    the classifier's device.

    Returns:
        numpy.ndarray: float32 ``(len(images), n_class)``.
    """
    if batchsize < 1:
        raise PredictError('batchsize must be positive, not {}'.format(
            batchsize))
    prep = info.preprocessor()
    device = classifier.device
    out = numpy.zeros((len(images), info.n_class), numpy.float32)
    for start in range(0, len(images), batchsize):
        batch = [data.read_image(image) if not isinstance(
            image, numpy.ndarray) else image
            for image in images[start:start + batchsize]]
        x = device.send(numpy.stack([prep(image) for image in batch]))
        with chainer.using_config('train', False), \
                chainer.no_backprop_mode():
            probs = F.softmax(classifier(x))
        out[start:start + len(batch)] = chainer.backend.CpuDevice().send(
            probs.array)
    return out


def top_classes(probabilities: numpy.ndarray, class_names: Sequence[str],
                top_k: int) -> List[List[Tuple[str, float]]]:
    """The ``top_k`` ``(class name, probability)`` of each row, most
    probable first (ties: the lower class index first). A ``top_k`` above
    the number of classes gives them all, as Keras's
    ``decode_predictions`` and timm's inference script do.

    Raises:
        PredictError: ``top_k`` below 1.
    """
    if top_k < 1:
        raise PredictError('top_k must be at least 1, not {}'.format(top_k))
    k = min(top_k, probabilities.shape[1])
    order = numpy.argsort(-probabilities, axis=1, kind='stable')[:, :k]
    return [[(class_names[c], float(row[c])) for c in indices]
            for row, indices in zip(probabilities, order)]


def predict(classifier: CaffeClassifier, info: ModelFile,
            images: Sequence[Image], top_k: int = 5, batchsize: int = 16
            ) -> List[List[Tuple[str, float]]]:
    """The ``top_k`` classes of each image with their probabilities.

    Args:
        classifier: From :func:`load_classifier`.
        info: Its :class:`~chainer_finetune.finetune.model_file.ModelFile`.
        images: Image files or ``(H, W, 3)`` RGB uint8 arrays.
        top_k: Classes per image (all of them when there are fewer).
        batchsize: Images per forward pass.

    Returns:
        list: Per image, ``[(class name, probability), ...]``, most
        probable first.
    """
    return top_classes(class_probabilities(classifier, info, images,
                                           batchsize),
                       info.class_names, top_k)


__all__ = ['Image', 'check_image_files', 'class_probabilities',
           'find_images', 'load_classifier', 'locate_model_file', 'predict',
           'top_classes', 'build_from_model_file']
