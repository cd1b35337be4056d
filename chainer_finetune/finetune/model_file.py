"""``model.json``: what rebuilds a run's fine-tuned classifier and feeds it.

Every run directory of a job (``pretrained/``, ``scratch/``) gets one
beside its ``best_model.npz`` (both names are declared in
``finetune/config.py``: ``MODEL_FILE``, ``WEIGHTS_FILE``), written before
training starts (:func:`describe_run`, :func:`write_model_file`). It records
the source model (a known model's name, the files' absolute paths and
SHA-256), how the network was cut and what head it got, the class names,
and the held-out preprocessing exactly as the job applied it.
:func:`read_model_file` checks it and returns a :class:`ModelFile`;
:mod:`chainer_finetune.predict` rebuilds the classifier from it.

The format (``format_version`` 1), as the demo's pretrained run writes it:

.. code-block:: text

    {"format": "chainer_finetune.finetuned_classifier",
     "format_version": 1, "library_version": "0.1.0",
     "run": "pretrained", "pretrained": true, "weights": "best_model.npz",
     "source": {"name": "open_nsfw", "known_model": "open_nsfw",
                "caffemodel": "/abs/…/resnet_50_1by2_nsfw.caffemodel",
                "caffemodel_sha256": "74b7…", "prototxt": "/abs/…",
                "prototxt_sha256": "…", "prototxt_given": false},
     "network": {"input_blob": "data",
                 "output_blob": "eltwise_stage2_block5",
                 "stop_at": "eltwise_stage2_block5", "new_head": true,
                 "replaced_layer": null, "n_class": 10},
     "class_names": ["0", "1", …],
     "preprocessing": {"image_channel_order": "RGB", "input_range": 255.0,
                       "resize": [64, 64], "resize_method": "bilinear",
                       "crop": null, "network_channel_order": "BGR",
                       "input_size": [64, 64], "mean_bgr": [104, 117, 123],
                       "mean_file": null, "mean_file_sha256": null,
                       "scale": 1.0}}

``mean_bgr`` is the per-channel mean; a mean image comes from
``mean_file`` (a ``mean.binaryproto``, checked against its SHA-256).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from chainer_finetune._version import __version__
from chainer_finetune.caffe.loader import load_mean
from chainer_finetune.caffe.preprocessing import CaffePreprocessor
from chainer_finetune.errors import PredictError
from chainer_finetune.files import atomic_output
from chainer_finetune.files import sha256_of
from chainer_finetune.finetune.config import FinetuneConfig
from chainer_finetune.finetune.config import MODEL_FILE
from chainer_finetune.finetune.config import ModelSource
from chainer_finetune.finetune.config import WEIGHTS_FILE
from chainer_finetune.finetune.model import CaffeClassifier

#: The ``format`` value of a ``model.json``.
FORMAT = 'chainer_finetune.finetuned_classifier'

#: The newest ``format_version`` this version writes and reads.
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A checked ``model.json`` (:func:`read_model_file`).

    Attributes:
        path: The ``model.json``.
        weights: The weights file (absolute path): its ``weights`` entry,
            beside it.
        library_version: The chainer_finetune version that wrote it.
        run: The run's name (``'pretrained'``, ``'scratch'``).
        pretrained: The run started from the Caffe model's values.
        source_name: The model as the job's configuration named it.
        known_model: The :data:`~chainer_finetune.hub.MODELS` key, or None
            for a model of the user's own.
        caffemodel: The ``.caffemodel`` the job loaded (absolute path).
        caffemodel_sha256: Its SHA-256 then.
        prototxt: The prototxt the job loaded, or None.
        prototxt_sha256: Its SHA-256 then, or None.
        prototxt_given: The configuration gave the prototxt (for a known
            model: instead of its own).
        input_blob: The blob that takes the image.
        output_blob: The blob the head pools (``new_head``), or the scores.
        stop_at: Where the net was cut (``feature_layer``), or None.
        new_head: A new pooling + BatchNormalization + Linear head.
        replaced_layer: The net's classifier layer that was replaced, or
            None.
        n_class: The number of classes.
        class_names: Their names; index = class.
        resize: ``(height, width)`` images are resized to (bilinear).
        crop: Centre crop after resizing, or None.
        mean_bgr: Per-channel mean in the network's (BGR) order, or None.
        mean_file: A ``mean.binaryproto`` holding a mean image, or None.
        mean_file_sha256: Its SHA-256 then, or None.
        scale: The multiplier after the mean.
        input_range: The value range of the images given (255).
        channel_order: The channel order of the images given (``'RGB'``).
    """

    path: str
    weights: str
    library_version: str
    run: str
    pretrained: bool
    source_name: str
    known_model: Optional[str]
    caffemodel: str
    caffemodel_sha256: str
    prototxt: Optional[str]
    prototxt_sha256: Optional[str]
    prototxt_given: bool
    input_blob: str
    output_blob: str
    stop_at: Optional[str]
    new_head: bool
    replaced_layer: Optional[str]
    n_class: int
    class_names: Tuple[str, ...]
    resize: Tuple[int, int]
    crop: Optional[Tuple[int, int]]
    mean_bgr: Optional[Tuple[float, ...]]
    mean_file: Optional[str]
    mean_file_sha256: Optional[str]
    scale: float
    input_range: float
    channel_order: str

    @property
    def input_size(self) -> Tuple[int, int]:
        """``(height, width)`` of the network's input."""
        return self.crop or self.resize

    def preprocessor(self) -> CaffePreprocessor:
        """The held-out preprocessing of the run, as the job built it.

        Raises:
            PredictError: The mean file is missing or changed.
        """
        mean: Any = self.mean_bgr
        if self.mean_file is not None:
            check_unchanged(self.mean_file, self.mean_file_sha256, self.path,
                            'mean file')
            mean = load_mean(self.mean_file)
        return CaffePreprocessor(mean=mean, resize=self.resize,
                                 crop=self.crop, scale=self.scale,
                                 input_range=self.input_range,
                                 channel_order=self.channel_order)


def check_unchanged(path: str, sha256: Optional[str], model_file: str,
                    what: str) -> None:
    """Raises :class:`PredictError` unless ``path`` exists with ``sha256``.

    Args:
        path: The file a run used.
        sha256: Its SHA-256 recorded then.
        model_file: The ``model.json`` that records it (for the message).
        what: What the file is (``'caffemodel'``), for the message.
    """
    if not os.path.isfile(path):
        raise PredictError('{}: not found; it is the {} that {} was '
                           'trained from'.format(path, what, model_file))
    found = sha256_of(path)
    if found != sha256:
        raise PredictError(
            '{}: the {} changed since {} was written (SHA-256 {}, recorded '
            '{}); the fine-tuned weights belong to the file as it was'
            .format(path, what, model_file, found, sha256))


def _abspath(path: Optional[str]) -> Optional[str]:
    return None if path is None else os.path.abspath(os.fspath(path))


def _source_entry(config: FinetuneConfig, source: ModelSource
                  ) -> Dict[str, Any]:
    prototxt = _abspath(source.prototxt)
    return {
        'name': source.name,
        'known_model': source.known.name if source.known else None,
        'caffemodel': _abspath(source.caffemodel),
        'caffemodel_sha256': sha256_of(source.caffemodel),
        'prototxt': prototxt,
        'prototxt_sha256': sha256_of(prototxt) if prototxt else None,
        'prototxt_given': config.prototxt is not None,
    }


def _preprocessing_entry(config: FinetuneConfig,
                         prep: CaffePreprocessor) -> Dict[str, Any]:
    mean = prep.mean
    per_channel = mean is not None and mean.ndim == 1
    mean_file = None
    if mean is not None and not per_channel:
        mean_file = _abspath(config.mean)
    resize = list(prep.resize) if prep.resize else None
    crop = list(prep.crop) if prep.crop else None
    return {
        'image_channel_order': prep.channel_order,
        'input_range': prep.input_range,
        'resize': resize,
        # F.resize_images, in CaffePreprocessor.
        'resize_method': 'bilinear',
        'crop': crop,
        'network_channel_order': 'BGR',
        'input_size': crop or resize,
        # float32 values, exact as JSON doubles.
        'mean_bgr': [float(v) for v in mean] if per_channel else None,
        'mean_file': mean_file,
        'mean_file_sha256': sha256_of(mean_file) if mean_file else None,
        'scale': prep.scale,
    }


def describe_run(config: FinetuneConfig, source: ModelSource,
                 model: CaffeClassifier, test_preprocessor: CaffePreprocessor,
                 class_names: Sequence[str], run: str,
                 pretrained: bool) -> Dict[str, Any]:
    """The ``model.json`` contents of one run (see the module docstring).

    Args:
        config: The job's configuration.
        source: The located model.
        model: The run's classifier (:func:`build_classifier`).
        test_preprocessor: The held-out preprocessor the job evaluates with
            (:func:`chainer_finetune.finetune.datasets.preprocessors`).
        class_names: The class names; index = class.
        run: The run's name (its directory).
        pretrained: The run starts from the Caffe model's values.
    """
    if test_preprocessor.resize is None:
        raise PredictError('the held-out preprocessing does not resize: '
                           'predict needs a fixed input size')
    return {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'library_version': __version__,
        'run': run,
        'pretrained': bool(pretrained),
        'weights': WEIGHTS_FILE,
        'source': _source_entry(config, source),
        'network': {
            'input_blob': model.input_name,
            'output_blob': model.output,
            'stop_at': config.feature_layer,
            'new_head': model.has_head,
            'replaced_layer': model.replaced_layer,
            'n_class': len(class_names),
        },
        'class_names': [str(c) for c in class_names],
        'preprocessing': _preprocessing_entry(config, test_preprocessor),
    }


def write_model_file(directory: str, description: Dict[str, Any]) -> str:
    """Writes ``description`` as ``directory/model.json`` (atomically,
    replacing one there: the job's ``--out`` check guards earlier
    results). Returns its path."""
    path = os.path.join(directory, MODEL_FILE)
    os.makedirs(directory, exist_ok=True)
    text = json.dumps(description, indent=2, sort_keys=False) + '\n'
    with atomic_output(path, overwrite=True) as tmp:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
    return path


class _Entries:
    """Typed access to a parsed ``model.json``; every problem is a
    :class:`PredictError` naming the file and the entry."""

    def __init__(self, path: str, data: Any) -> None:
        self.path = path
        self.data = data

    def get(self, dotted: str, kind: Any, optional: bool = False) -> Any:
        value = self.data
        for key in dotted.split('.'):
            if not isinstance(value, dict) or key not in value:
                raise PredictError('{}: no {!r} entry; expected a model '
                                   'description written by chainer-finetune '
                                   'finetune'.format(self.path, dotted))
            value = value[key]
        if value is None and optional:
            return None
        # bool is an int: a count or size given as true is refused too.
        if not isinstance(value, kind) or (
                kind is not bool and isinstance(value, bool)):
            raise PredictError('{}: {!r} is {!r}; expected {}{}'.format(
                self.path, dotted, value, _kind_name(kind),
                ' or null' if optional else ''))
        return value

    def pair(self, dotted: str, optional: bool = False
             ) -> Optional[Tuple[int, int]]:
        value = self.get(dotted, list, optional)
        if value is None:
            return None
        if len(value) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0
                for v in value):
            raise PredictError('{}: {!r} is {!r}; expected [height, width] '
                               'of positive integers'.format(
                                   self.path, dotted, value))
        return value[0], value[1]

    def numbers(self, dotted: str) -> Optional[Tuple[float, ...]]:
        value = self.get(dotted, list, optional=True)
        if value is not None and not all(
                isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in value):
            raise PredictError('{}: {!r} is {!r}; expected a list of '
                               'numbers'.format(self.path, dotted, value))
        return None if value is None else tuple(float(v) for v in value)


def _kind_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: 'a string', bool: 'true or false', int: 'an integer',
             float: 'a number', list: 'a list', dict: 'an object'}
    return ' or '.join(names.get(k, k.__name__) for k in kinds)


def _parse(path: str) -> _Entries:
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except FileNotFoundError:
        raise PredictError('{}: not found; each run directory of '
                           'chainer-finetune finetune holds one beside its '
                           '{}'.format(path, WEIGHTS_FILE)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PredictError('{}: not valid JSON ({})'.format(path, e)) from e
    except OSError as e:
        raise PredictError('cannot read {}: {}'.format(
            path, e.strerror or e)) from e
    entries = _Entries(path, data)
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        raise PredictError('{}: not a chainer_finetune model description '
                           '(its "format" is not {!r})'.format(path, FORMAT))
    version = entries.get('format_version', int)
    if not 1 <= version <= FORMAT_VERSION:
        raise PredictError(
            '{}: format_version {} (written by chainer_finetune {}); this '
            'version ({}) reads 1 to {}'.format(
                path, version, data.get('library_version'), __version__,
                FORMAT_VERSION))
    return entries


def _source_fields(e: _Entries) -> Dict[str, Any]:
    return dict(
        source_name=e.get('source.name', str),
        known_model=e.get('source.known_model', str, True),
        caffemodel=e.get('source.caffemodel', str),
        caffemodel_sha256=e.get('source.caffemodel_sha256', str),
        prototxt=e.get('source.prototxt', str, True),
        prototxt_sha256=e.get('source.prototxt_sha256', str, True),
        prototxt_given=e.get('source.prototxt_given', bool))


def _network_fields(e: _Entries) -> Dict[str, Any]:
    fields = dict(
        input_blob=e.get('network.input_blob', str),
        output_blob=e.get('network.output_blob', str),
        stop_at=e.get('network.stop_at', str, True),
        new_head=e.get('network.new_head', bool),
        replaced_layer=e.get('network.replaced_layer', str, True),
        n_class=e.get('network.n_class', int),
        class_names=tuple(e.get('class_names', list)))
    if fields['new_head'] == (fields['replaced_layer'] is not None):
        raise PredictError('{}: a network has either a new head or a '
                           'replaced layer, not {}'.format(
                               e.path, 'both' if fields['new_head']
                               else 'neither'))
    names = fields['class_names']
    if len(names) != fields['n_class'] or fields['n_class'] < 1 or not all(
            isinstance(n, str) for n in names):
        raise PredictError('{}: "class_names" must be {} strings (n_class), '
                           'got {!r}'.format(e.path, fields['n_class'],
                                             list(names)[:20]))
    return fields


def _preprocessing_fields(e: _Entries) -> Dict[str, Any]:
    fields = dict(
        resize=e.pair('preprocessing.resize'),
        crop=e.pair('preprocessing.crop', optional=True),
        mean_bgr=e.numbers('preprocessing.mean_bgr'),
        mean_file=e.get('preprocessing.mean_file', str, True),
        mean_file_sha256=e.get('preprocessing.mean_file_sha256', str, True),
        scale=float(e.get('preprocessing.scale', (int, float))),
        input_range=float(e.get('preprocessing.input_range', (int, float))),
        channel_order=e.get('preprocessing.image_channel_order', str))
    if fields['channel_order'] not in ('RGB', 'BGR'):
        raise PredictError('{}: image_channel_order must be "RGB" or "BGR", '
                           'not {!r}'.format(e.path, fields['channel_order']))
    if fields['mean_bgr'] is not None and len(fields['mean_bgr']) != 3:
        raise PredictError('{}: "mean_bgr" must hold 3 values, got {}'
                           .format(e.path, len(fields['mean_bgr'])))
    return fields


def read_model_file(path: str) -> ModelFile:
    """Reads and checks a ``model.json`` (the files it names are not
    opened here).

    Raises:
        PredictError: The file is missing, not JSON, not a model
            description, of a newer format, or an entry is missing or of
            the wrong kind (the message names the file and the entry).
    """
    path = os.path.abspath(os.fspath(path))
    e = _parse(path)
    weights = e.get('weights', str)
    if os.path.basename(weights) != weights or not weights:
        raise PredictError('{}: "weights" must be a file name beside it, '
                           'not {!r}'.format(path, weights))
    return ModelFile(
        path=path, weights=os.path.join(os.path.dirname(path), weights),
        library_version=e.get('library_version', str),
        run=e.get('run', str), pretrained=e.get('pretrained', bool),
        **_source_fields(e), **_network_fields(e),
        **_preprocessing_fields(e))


__all__: List[str] = ['FORMAT', 'FORMAT_VERSION', 'ModelFile',
                      'check_unchanged', 'describe_run', 'read_model_file',
                      'write_model_file']
