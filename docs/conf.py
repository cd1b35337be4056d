"""Sphinx configuration of the chainer_finetune documentation.

Build with ``tox run -e docs`` (warnings are errors; HTML in
``.tox/docs_html``), or in an environment holding the package and Sphinx::

    sphinx-build -W --keep-going -b html docs docs/_build/html

No extension reaches the network (no intersphinx). The theme is furo (its
content column scrolls wide code blocks instead of cutting them), with
sphinx-copybutton; both pinned in setup.py's ``docs`` extra.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Autodoc imports the package from the source tree when it is not installed.
sys.path.insert(0, ROOT)

# First, before anything imports Chainer: the compatibility patches that
# make Chainer 7.8.1 import on NumPy 2 / protobuf >= 4 (docs/compat.rst).
import chainer_finetune  # NOQA: E402,F401

about = {}
with open(os.path.join(ROOT, 'chainer_finetune', '_version.py')) as f:
    exec(f.read(), about)

project = 'chainer_finetune'
author = 'the chainer_finetune authors'
copyright = 'the chainer_finetune authors'
version = '.'.join(about['__version__'].split('.')[:2])
release = about['__version__']

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
    'sphinx_copybutton',
]
# Copy commands without their prompts (``$ ``, ``>>> ``, ``... ``).
copybutton_prompt_text = r'\$ |>>> |\.\.\. '
copybutton_prompt_is_regexp = True

root_doc = master_doc = 'index'
source_suffix = {'.rst': 'restructuredtext'}
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']
templates_path = []

# Chainer's own docstrings are Google style.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_attr_annotations = True

autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_typehints_description_target = 'documented_params'
# Members are listed explicitly (``:members:``) in api.rst.
autodoc_default_options = {
    'show-inheritance': True,
}

# Unresolvable references (Chainer, NumPy: no intersphinx) are not errors.
nitpicky = False

pygments_style = 'sphinx'
highlight_language = 'python3'

html_theme = 'furo'
html_theme_options = {
    # Nothing fetched from elsewhere when the pages are opened.
    'top_of_page_buttons': [],
}
html_static_path = ['_static']
html_css_files = ['custom.css']
html_title = 'chainer_finetune {}'.format(release)
html_show_sourcelink = False


# -- Hooks -----------------------------------------------------------------

def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """Leaves NamedTuple fields to the class's ``Attributes:`` section.

    Autodoc would list each field again ("Alias for field number N"), and
    napoleon's attribute entries for the same names would then be
    duplicate object descriptions.
    """
    if type(obj).__name__ == '_tuplegetter':
        return True
    return None


_documented = None


def _documented_objects(env):
    """``{id(python object): documented name}`` of the py domain's objects."""
    global _documented
    if _documented is None:
        import importlib
        _documented = {}
        for name in env.get_domain('py').objects:
            obj = _locate(name, importlib)
            if obj is not None:
                _documented.setdefault(id(obj), name)
    return _documented


def _locate(dotted, importlib):
    """The object a dotted name means, or None.

    Attribute access from the top package first (so ``chainer_finetune.freeze``
    is the function the package exports), then the longest importable
    module plus attributes (``chainer_finetune.freeze.freeze``).
    """
    parts = dotted.split('.')
    try:
        obj = importlib.import_module(parts[0])
        for attr in parts[1:]:
            obj = getattr(obj, attr)
        return obj
    except (ImportError, AttributeError):
        pass
    for i in range(len(parts), 1, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _docstring_owner(node):
    """``a.b.c`` of the docstring a node comes from (autodoc sets the source
    of docstring lines to ``FILE:docstring of a.b.c``), or None."""
    while node is not None:
        source = node.get('source') if hasattr(node, 'get') else None
        source = source or getattr(node, 'source', None)
        if source and ':docstring of ' in source:
            return source.rsplit(':docstring of ', 1)[1]
        node = node.parent
    return None


def _resolve_alias(app, env, node, contnode):
    """Links a reference to a chainer_finetune object under another name.

    The same object is reachable as ``chainer_finetune.copy_model``,
    ``chainer_finetune.copy.copy_model`` or, inside its module's docstrings,
    by its bare name; the API reference documents it once. A reference by
    any of those names links to that one entry.
    """
    if node.get('refdomain') != 'py':
        return None
    import importlib
    target = node['reftarget'].lstrip('.~')
    candidates = [target]
    scopes = []
    modname = node.get('py:module')
    if modname:
        clsname = node.get('py:class')
        if clsname:
            scopes.append(modname + '.' + clsname)
        scopes.append(modname)
    owner = _docstring_owner(node)
    if owner:
        # The documented object's own module and class: where the
        # docstring's bare names are defined.
        parts = owner.split('.')
        scopes.extend('.'.join(parts[:i]) for i in range(len(parts), 0, -1))
    candidates += [scope + '.' + target for scope in scopes]
    documented = _documented_objects(env)
    domain = env.get_domain('py')
    from sphinx.util.nodes import make_refnode
    for candidate in candidates:
        if not candidate.startswith('chainer_finetune'):
            continue
        if candidate in domain.objects:
            entry = domain.objects[candidate]
            return make_refnode(app.builder, node['refdoc'], entry.docname,
                                entry.node_id, contnode, candidate)
        obj = _locate(candidate, importlib)
        if obj is None or isinstance(obj, (int, float, str, tuple)):
            continue
        name = documented.get(id(obj))
        if name is None:
            continue
        entry = domain.objects[name]
        return make_refnode(app.builder, node['refdoc'], entry.docname,
                            entry.node_id, contnode, name)
    return None


def _reset(app, env, docnames, *args):
    global _documented
    _documented = None


def setup(app):
    app.connect('autodoc-skip-member', _skip_namedtuple_fields)
    app.connect('env-before-read-docs', _reset)
    app.connect('missing-reference', _resolve_alias)

# chainer_finetune.onnx_graph imports onnx (the optional [onnx] extra) at
# module level; the docs build does not need it installed.
autodoc_mock_imports = ['onnx']
