"""Import chainer_finetune when ``chainer`` is imported first.

Chainer 7.8.1 does not import under NumPy 2 (nor, on Python 3.11, beside
setuptools >= 80) unless :mod:`chainer_finetune` patched the stack first;
scripts that begin with ``import chainer`` would fail. The installed
``chainer_finetune-import-hook.pth`` calls :func:`install` at interpreter
start-up, which only puts a finder on :data:`sys.meta_path`: nothing else is
imported then. The first ``import chainer`` (or of any ``chainer.*``
module) makes the finder import :mod:`chainer_finetune`, which applies its
compatibility patches and imports Chainer; the finder then hands that
Chainer module to the import system and removes itself. When Chainer is
never imported, nothing happens.

Setting ``CHAINER_FINETUNE_NO_IMPORT_HOOK`` to a non-empty value other than
``0`` turns the hook off. This module lives outside the package because
importing any ``chainer_finetune.*`` module runs the package's
``__init__``, which imports Chainer.
"""

from __future__ import annotations

# Imported at every start-up: only os and sys, which site has loaded
# already; importlib and warnings are imported when chainer is.
import os
import sys

#: The environment variable that turns the hook off.
DISABLE_VARIABLE = 'CHAINER_FINETUNE_NO_IMPORT_HOOK'


def disabled() -> bool:
    """Whether :data:`DISABLE_VARIABLE` turns the hook off."""
    return os.environ.get(DISABLE_VARIABLE, '') not in ('', '0')


class ChainerImportFinder:
    """A one-shot finder for ``chainer`` that imports chainer_finetune first.

    Also its own loader: ``create_module`` returns the ``chainer`` module
    that importing :mod:`chainer_finetune` produced, and ``exec_module``
    has nothing left to run (the same pattern as the schema finder of
    :mod:`chainer_finetune._compat`).
    """

    def find_spec(self, fullname: str, path: list[str] | None,
                  target: object = None) -> object:
        if fullname != 'chainer':
            return None
        # One shot: the import of chainer below must reach the real finders.
        uninstall()
        import importlib.util
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: object) -> object:
        import importlib
        try:
            importlib.import_module('chainer_finetune')
        except Exception as error:  # the plain import of chainer follows
            import warnings
            warnings.warn(
                'chainer_finetune could not be imported before chainer '
                '({}: {}); importing chainer without its compatibility '
                'patches. Set {}=1 to turn this hook off.'.format(
                    type(error).__name__, error, DISABLE_VARIABLE),
                RuntimeWarning, stacklevel=2)
        if 'chainer' in sys.modules:
            return sys.modules['chainer']
        return importlib.import_module('chainer')

    def exec_module(self, module: object) -> None:
        pass  # executed while chainer_finetune imported it


def install() -> None:
    """Put the finder first on :data:`sys.meta_path` (once).

    Does nothing when Chainer is already imported or when
    :data:`DISABLE_VARIABLE` is set.
    """
    if disabled() or 'chainer' in sys.modules:
        return
    if not any(isinstance(f, ChainerImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, ChainerImportFinder())


def uninstall() -> None:
    """Remove the finder from :data:`sys.meta_path`."""
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not isinstance(f, ChainerImportFinder)]
