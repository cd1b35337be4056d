"""Make Chainer 7.8.1 run on NumPy 2, protobuf >= 4 and Python 3.12+.

:func:`apply` runs when :mod:`chainer_finetune` is imported, before Chainer
is, and patches exactly the places that break: each patch is guarded by a
feature test (never a version number), and NumPy itself is never modified
(a Chainer function that needs a removed name sees a view of NumPy with it
added back). :data:`APPLIED` lists what it did. See ``docs/compat.rst``.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import importlib.util
import logging
import sys
import types
import warnings
from typing import (Any, Callable, Dict, List, NamedTuple, Optional,
                    Sequence)

import numpy

logger = logging.getLogger(__name__)

#: Names of the patches :func:`apply` applied in this process, in order.
APPLIED: List[str] = []

# Chainer's own copy of the Caffe schema; see _CaffeSchemaFinder.
_CHAINER_CAFFE_PB2 = 'chainer.links.caffe.protobuf3.caffe_pb2'
_OUR_CAFFE_PB2 = 'chainer_finetune.caffe.caffe_pb2'

# CuPy's package names as Chainer 7.8.1 lists them (chainer/_version.py),
# plus the ones published since, for the "several CuPy installed" check.
_CUPY_DISTRIBUTIONS = (
    'cupy', 'cupy-cuda80', 'cupy-cuda90', 'cupy-cuda91', 'cupy-cuda92',
    'cupy-cuda100', 'cupy-cuda101', 'cupy-cuda102', 'cupy-cuda110',
    'cupy-cuda111', 'cupy-cuda112', 'cupy-cuda113', 'cupy-cuda114',
    'cupy-cuda115', 'cupy-cuda116', 'cupy-cuda117', 'cupy-cuda118',
    'cupy-cuda119', 'cupy-cuda120', 'cupy-cuda11x', 'cupy-cuda12x',
    'cupy-cuda13x', 'cupy-rocm-4-3', 'cupy-rocm-5-0')


class _NumpyView(types.ModuleType):
    """NumPy with a few names overridden, for one Chainer function's globals.

    Attribute lookups that are not overridden go to the real :mod:`numpy`,
    so the module sees NumPy exactly as before apart from the given names.
    """

    def __init__(self, overrides: Dict[str, Any]) -> None:
        super().__init__(numpy.__name__, numpy.__doc__)
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(numpy, name)

    def __repr__(self) -> str:
        return '<numpy view with {}>'.format(
            ', '.join(sorted(k for k in self.__dict__
                             if not k.startswith('__'))))


def _numpy1_sctypes() -> Dict[str, list]:
    # The table NumPy 1.x exposed as numpy.sctypes (removed in NumPy 2.0).
    return {
        'int': [numpy.int8, numpy.int16, numpy.int32, numpy.int64],
        'uint': [numpy.uint8, numpy.uint16, numpy.uint32, numpy.uint64],
        'float': [numpy.float16, numpy.float32, numpy.float64,
                  numpy.longdouble],
        'complex': [numpy.complex64, numpy.complex128, numpy.clongdouble],
        'others': [bool, object, bytes, str, numpy.void],
    }


def _meshgrid_as_list(*xi: Any, **kwargs: Any) -> list:
    # NumPy 2 returns a tuple; NumPy 1.x returned a list.
    return list(numpy.meshgrid(*xi, **kwargs))


def _has_numpy_attr(name: str) -> bool:
    # NumPy 2 raises AttributeError (with a message) for removed names;
    # hasattr turns that into False without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return hasattr(numpy, name)


def _imports(name: str) -> bool:
    # A real import, not find_spec: numpy.distutils can be present and still
    # fail to import (NumPy 1.26 beside setuptools >= 80, whose distutils
    # lacks msvccompiler). Chainer would import these modules anyway.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            importlib.import_module(name)
        except Exception:  # ImportError, or whatever the module raises
            return False
    return True


def _with_numpy_view(module_name: str, qualname: str,
                     overrides: Dict[str, Any]) -> None:
    """Rebind one Chainer function to a NumPy view with ``overrides``.

    Only that function sees the view (its globals are a copy of the
    module's with the ``numpy`` name swapped), so identity tests such as
    ``xp is numpy`` elsewhere in the module keep working.
    """
    module = sys.modules.get(module_name)
    if module is None:  # chainer's import failed before reaching it
        return
    owner: Any = module
    *path, name = qualname.split('.')
    for part in path:
        owner = getattr(owner, part)
    func = getattr(owner, name)
    view = _NumpyView(overrides)
    func_globals = {key: (view if value is numpy else value)
                    for key, value in func.__globals__.items()}
    patched = types.FunctionType(func.__code__, func_globals, func.__name__,
                                 func.__defaults__, func.__closure__)
    patched.__kwdefaults__ = func.__kwdefaults__
    patched.__dict__.update(func.__dict__)
    patched.__doc__ = func.__doc__
    patched.__qualname__ = func.__qualname__
    patched.__module__ = func.__module__
    setattr(owner, name, patched)


def _environment_check_module() -> types.ModuleType:
    """A stand-in for ``chainer/_environment_check.py``.

    Chainer's imports ``numpy.distutils`` and ``pkg_resources`` only to warn
    about macOS Accelerate and CuPy versions. The stand-in keeps the one
    check that still means something (two CuPy packages installed side by
    side); Chainer's CuPy window (>=7.7,<8) excludes every CuPy released
    since, see docs/gpu.rst.
    """
    module = types.ModuleType('chainer._environment_check')
    module.__doc__ = _environment_check_module.__doc__

    def check() -> None:
        installed = []
        for dist in _CUPY_DISTRIBUTIONS:
            try:
                importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
            installed.append(dist)
        if len(installed) > 1:
            warnings.warn(
                'Several CuPy packages are installed ({}); they overwrite '
                'each other. Uninstall all but one.'.format(
                    ', '.join(installed)))

    module.check = check  # type: ignore[attr-defined]
    return module


class _CaffeSchemaFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serve our caffe_pb2 where ``chainer.links.caffe`` imports its own.

    Chainer's ``chainer/links/caffe/protobuf3/caffe_pb2.py`` was generated by
    protoc 3.x and raises "Descriptors cannot be created directly" under
    protobuf >= 4 (the only workaround, pure-Python protobuf, is ~20x
    slower). Our schema is a superset of Chainer's, so ``CaffeFunction`` runs
    on it unchanged. It is also served under protobuf 3.x: two modules that
    both define ``caffe.NetParameter`` cannot share a descriptor pool.
    """

    def find_spec(self, fullname: str, path: Optional[Sequence[str]],
                  target: Optional[types.ModuleType] = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != _CHAINER_CAFFE_PB2:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec
                      ) -> types.ModuleType:
        return importlib.import_module(_OUR_CAFFE_PB2)

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # already executed as chainer_finetune.caffe.caffe_pb2


def _install_caffe_schema_finder() -> None:
    if not any(isinstance(f, _CaffeSchemaFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CaffeSchemaFinder())


class _Patch(NamedTuple):
    """One compatibility patch: when it is needed and what it does."""

    name: str
    needed: Callable[[], bool]
    # Run before `import chainer`; may leave temporary state that
    # after_import cleans up whether or not the import succeeded.
    before_import: Optional[Callable[[], None]] = None
    after_import: Optional[Callable[[], None]] = None
    must_precede_chainer: bool = True
    # A bug in Chainer's own code is tested by running that code, so the
    # test runs once Chainer is imported (and before_import is unused).
    tested_after_import: bool = False


def _set_temporary_sctypes() -> None:
    # as_strided.py reads numpy.sctypes at import time, before its globals
    # can be replaced; the attribute is removed again after the import.
    numpy.sctypes = _numpy1_sctypes()  # type: ignore[attr-defined]


def _move_sctypes_into_as_strided() -> None:
    if 'sctypes' in vars(numpy):
        del numpy.sctypes  # type: ignore[attr-defined]
    # as_strided.py also reads numpy.sctypes['float'] in its backward pass.
    _with_numpy_view('chainer.functions.array.as_strided',
                     'AsStridedGrad.forward', {'sctypes': _numpy1_sctypes()})


def _deconvolution_backward_fails() -> bool:
    # Chainer 7.8.1: Deconvolution2DFunction.backward calls
    # self._set_cover_all(x, W) with the variables instead of their shapes
    # when only W (not x) needs a gradient: a trained deconvolution after a
    # frozen prefix. Unpacking a variable then raises, or, when its first
    # axis happens to have 4 entries, decides cover_all from garbage.
    import chainer
    import chainer.functions as F
    x = numpy.zeros((1, 1, 2, 2), numpy.float32)
    W = chainer.Variable(numpy.zeros((1, 1, 2, 2), numpy.float32))
    try:
        F.sum(F.deconvolution_2d(x, W)).backward()
    except (ValueError, TypeError):
        return True
    return False


def _patch_deconvolution_cover_all() -> None:
    from chainer.functions.connection import deconvolution_2d
    cls = deconvolution_2d.Deconvolution2DFunction
    original = cls._set_cover_all

    def _set_cover_all(self: Any, x_shape: Any, w_shape: Any) -> None:
        original(self, getattr(x_shape, 'shape', x_shape),
                 getattr(w_shape, 'shape', w_shape))
    _set_cover_all.__wrapped__ = original  # type: ignore[attr-defined]
    cls._set_cover_all = _set_cover_all


def _install_environment_check() -> None:
    sys.modules['chainer._environment_check'] = _environment_check_module()


_PATCHES = [
    # chainer/_environment_check.py: imports numpy.distutils and
    # pkg_resources at import time; both may be missing on a current stack.
    _Patch('chainer._environment_check without numpy.distutils/pkg_resources',
           needed=lambda: not (_imports('numpy.distutils.system_info')
                               and _imports('pkg_resources')),
           before_import=_install_environment_check),
    # chainer/functions/array/as_strided.py: numpy.sctypes, removed in
    # NumPy 2.0, read at import time and in AsStridedGrad.forward.
    _Patch('numpy.sctypes for chainer.functions.array.as_strided',
           needed=lambda: not _has_numpy_attr('sctypes'),
           before_import=_set_temporary_sctypes,
           after_import=_move_sctypes_into_as_strided),
    # chainer/functions/array/resize_images.py: numpy.float (an alias of
    # the builtin float), removed in NumPy 1.24; used by F.resize_images.
    _Patch('numpy.float for chainer.functions.array.resize_images',
           needed=lambda: not _has_numpy_attr('float'),
           after_import=lambda: _with_numpy_view(
               'chainer.functions.array.resize_images',
               'compute_indices_and_weights', {'float': float})),
    # chainer/distributions/categorical.py: Categorical.log_prob does
    # `meshgrid(...) + [x]`; NumPy 2's meshgrid returns a tuple.
    _Patch('list-returning numpy.meshgrid for '
           'chainer.distributions.categorical',
           needed=lambda: isinstance(numpy.meshgrid([0], [0]), tuple),
           after_import=lambda: _with_numpy_view(
               'chainer.distributions.categorical', 'Categorical.log_prob',
               {'meshgrid': _meshgrid_as_list})),
    # chainer/links/caffe/protobuf3/caffe_pb2.py: generated by an old protoc,
    # unusable under protobuf >= 4; see _CaffeSchemaFinder.
    _Patch('caffe_pb2 for chainer.links.caffe from chainer_finetune.caffe',
           needed=lambda: _CHAINER_CAFFE_PB2 not in sys.modules,
           before_import=_install_caffe_schema_finder,
           must_precede_chainer=False),
    # chainer/functions/connection/deconvolution_2d.py: backward passes
    # variables where shapes are expected when x needs no gradient.
    _Patch('shapes for Deconvolution2DFunction._set_cover_all',
           needed=_deconvolution_backward_fails,
           after_import=_patch_deconvolution_cover_all,
           tested_after_import=True),
]


def apply() -> List[str]:
    """Apply the patches this stack needs, once per process.

    Returns:
        The names of the patches applied (also kept in :data:`APPLIED`).

    Raises:
        RuntimeError: if Chainer was imported before this ran and a patch
            that has to act before Chainer's import is needed.
    """
    if APPLIED:
        return list(APPLIED)
    # numpy.distutils (imported by Chainer's environment check, and by the
    # feature test below) resets the root logger's level through
    # distutils.log; keep the user's setting.
    root = logging.getLogger()
    root_level = root.level
    try:
        return _apply()
    finally:
        root.setLevel(root_level)


def _apply() -> List[str]:
    chainer_was_imported = 'chainer' in sys.modules
    needed = [p for p in _PATCHES
              if not p.tested_after_import and p.needed()]
    for patch in needed:
        if patch.before_import is not None:
            if chainer_was_imported and patch.must_precede_chainer:
                raise RuntimeError(
                    'chainer was imported before chainer_finetune, and this '
                    'stack needs a patch that must come first ({}). Import '
                    'chainer_finetune before chainer, or install the package '
                    '(its import hook then does it; see docs/compat.rst).'
                    .format(patch.name))
            patch.before_import()
    try:
        import chainer  # noqa: F401  (runs chainer/__init__ with patches)
    finally:
        for patch in needed:
            if patch.after_import is not None:
                patch.after_import()
    for patch in _PATCHES:
        if patch.tested_after_import and patch.needed():
            if patch.after_import is not None:
                patch.after_import()
            needed.append(patch)
    for patch in needed:
        APPLIED.append(patch.name)
        logger.debug('compat patch applied: %s', patch.name)
    return list(APPLIED)


# --- onnx-chainer 1.6.0 (the [onnx] extra), shimmed only when imported ---

#: Names of the shims :func:`import_onnx_chainer` applied in this process.
ONNX_CHAINER_APPLIED: List[str] = []

# onnx.mapping.STORAGE_TENSOR_TYPE_TO_FIELD as onnx 1.6-1.12 defined it:
# the TensorProto field that holds each *storage* type. onnx-chainer reads it
# (context.py) to write small constants as typed fields instead of raw bytes.
_STORAGE_FIELDS = {'FLOAT': 'float_data', 'INT32': 'int32_data',
                   'INT64': 'int64_data', 'UINT16': 'int32_data',
                   'DOUBLE': 'double_data', 'COMPLEX64': 'float_data',
                   'COMPLEX128': 'double_data', 'UINT32': 'uint64_data',
                   'UINT64': 'uint64_data', 'STRING': 'string_data',
                   'BOOL': 'int32_data'}
# The NumPy types onnx.mapping knew (no ml_dtypes types: onnx-chainer
# never meets them).
_MAPPING_NUMPY_TYPES = ('float16', 'float32', 'float64', 'int8', 'int16',
                        'int32', 'int64', 'uint8', 'uint16', 'uint32',
                        'uint64', 'bool', 'complex64', 'complex128', 'object')


def _onnx_mapping_module() -> types.ModuleType:
    """A stand-in for ``onnx.mapping`` (removed in onnx 1.19) built from
    the public ``onnx.helper`` functions that replaced it."""
    import onnx
    from onnx import helper
    module = types.ModuleType('onnx.mapping')
    np_to_tensor = {numpy.dtype(t): int(helper.np_dtype_to_tensor_dtype(
        numpy.dtype(t))) for t in _MAPPING_NUMPY_TYPES}
    module.NP_TYPE_TO_TENSOR_TYPE = np_to_tensor  # type: ignore[attr-defined]
    module.TENSOR_TYPE_TO_NP_TYPE = {  # type: ignore[attr-defined]
        v: k for k, v in np_to_tensor.items()}
    module.STORAGE_TENSOR_TYPE_TO_FIELD = {  # type: ignore[attr-defined]
        int(getattr(onnx.TensorProto, name)): field
        for name, field in _STORAGE_FIELDS.items()}
    return module


class _OnnxView(types.ModuleType):
    """The ``onnx`` module with ``mapping`` added, for onnx-chainer's
    ``context`` module alone (``onnx`` itself is not modified)."""

    def __init__(self, onnx_module: types.ModuleType,
                 mapping: types.ModuleType) -> None:
        super().__init__(onnx_module.__name__, onnx_module.__doc__)
        self.__dict__['_onnx'] = onnx_module
        self.mapping = mapping

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__['_onnx'], name)


def _pkg_resources_module() -> types.ModuleType:
    """A stand-in for ``pkg_resources`` with the one call onnx-chainer's
    ``__init__`` makes: ``get_distribution(name).version``."""
    module = types.ModuleType('pkg_resources')

    def get_distribution(name: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(
            project_name=name, version=importlib.metadata.version(name))
    module.get_distribution = get_distribution  # type: ignore[attr-defined]
    return module


def import_onnx_chainer() -> types.ModuleType:
    """Imports ``onnx_chainer`` (1.6.0) with the shims this stack needs.

    onnx-chainer imports ``onnx.mapping`` (removed in onnx 1.19; its
    ImportError is swallowed and export then claims "ONNX is not
    installed") and ``pkg_resources`` (removed in setuptools 82). Each shim
    is decided by a real import attempt and lasts only for the import of
    ``onnx_chainer``: afterwards neither ``onnx.mapping`` nor
    ``pkg_resources`` is left in ``sys.modules``, and the one onnx-chainer
    function that reads ``onnx.mapping`` at run time sees a view of
    ``onnx`` with it. Nothing is patched until this is called.

    Returns:
        The ``onnx_chainer`` module.

    Raises:
        ImportError: onnx or onnx_chainer is not installed (the original
            error).
    """
    if sys.modules.get('onnx_chainer') is not None:
        return sys.modules['onnx_chainer']
    import onnx  # an ImportError here means: onnx is not installed
    temporary: Dict[str, types.ModuleType] = {}
    if not _imports('onnx.mapping'):
        temporary['onnx.mapping'] = _onnx_mapping_module()
    if not _imports('pkg_resources'):
        temporary['pkg_resources'] = _pkg_resources_module()
    sys.modules.update(temporary)
    had_mapping_attr = hasattr(onnx, 'mapping')
    if 'onnx.mapping' in temporary:
        onnx.mapping = temporary['onnx.mapping']  # type: ignore[attr-defined]
    try:
        module = importlib.import_module('onnx_chainer')
        if not module.export.__globals__.get('_available', False):
            # onnx-chainer swallowed an ImportError of its own imports.
            raise ImportError('onnx_chainer imported, but reports its onnx '
                              'imports as failed')
    finally:
        for name in temporary:
            sys.modules.pop(name, None)
        if 'onnx.mapping' in temporary and not had_mapping_attr:
            del onnx.mapping  # type: ignore[attr-defined]
    _finish_onnx_chainer_shims(temporary)
    return module


def _finish_onnx_chainer_shims(temporary: Dict[str, types.ModuleType]
                               ) -> None:
    if 'onnx.mapping' in temporary:
        context = sys.modules['onnx_chainer.context']
        func = context._tensor_from_array_for_constant
        view = _OnnxView(sys.modules['onnx'], temporary['onnx.mapping'])
        func_globals = dict(func.__globals__, onnx=view)
        context._tensor_from_array_for_constant = types.FunctionType(
            func.__code__, func_globals, func.__name__, func.__defaults__,
            func.__closure__)
        ONNX_CHAINER_APPLIED.append('onnx.mapping for onnx_chainer')
    if 'pkg_resources' in temporary:
        ONNX_CHAINER_APPLIED.append('pkg_resources for onnx_chainer')
    for name in ONNX_CHAINER_APPLIED:
        logger.debug('compat shim applied: %s', name)
