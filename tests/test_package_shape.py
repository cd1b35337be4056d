"""The rules of docs/architecture.rst, checked on the source.

Read from the source with :mod:`ast` (nothing is imported): every function
body fits on a screen, no module imports the package itself, imports
within the package form no cycle, and no module reaches into another
module's private names.
"""

import ast
import importlib
import os
from typing import Dict, Iterator, List, Set, Tuple

import pytest

PACKAGE = 'chainer_finetune'
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), PACKAGE)
GENERATED = {'chainer_finetune/caffe/caffe_pb2.py'}
MAX_BODY_LINES = 80


def _modules() -> Dict[str, str]:
    """Dotted module name -> path, for every source file of the package."""
    found = {}
    for directory, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, os.path.dirname(ROOT))
            if rel.replace(os.sep, '/') in GENERATED:
                continue
            dotted = rel[:-3].replace(os.sep, '.')
            if dotted.endswith('.__init__'):
                dotted = dotted[:-len('.__init__')]
            found[dotted] = path
    return found


MODULES = _modules()


def _tree(module: str) -> ast.Module:
    with open(MODULES[module], encoding='utf-8') as f:
        return ast.parse(f.read(), MODULES[module])


def _functions(tree: ast.AST) -> Iterator[ast.AST]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _body_lines(func) -> int:
    body = func.body
    if body and isinstance(body[0], ast.Expr) and isinstance(
            getattr(body[0], 'value', None), ast.Constant) and isinstance(
                body[0].value.value, str):
        body = body[1:]   # the docstring
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ''
    package = module if MODULES[module].endswith('__init__.py') else \
        module.rpartition('.')[0]
    for _ in range(node.level - 1):
        package = package.rpartition('.')[0]
    return package + ('.' + node.module if node.module else '')


def _imports(module: str) -> List[Tuple[str, List[str], int]]:
    """(imported module, names taken from it, line) for each import."""
    out = []
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((_resolve(module, node),
                        [a.name for a in node.names], node.lineno))
    return out


def _internal_edges(module: str) -> Set[str]:
    """Package modules that ``module`` imports (a name taken from a
    package counts as its submodule when one exists)."""
    edges = set()
    for target, names, _ in _imports(module):
        if not target.startswith(PACKAGE):
            continue
        subs = [target + '.' + n for n in names if target + '.' + n in
                MODULES]
        edges.update(subs or [target])
    edges.discard(module)
    return {e for e in edges if e in MODULES}


def test_modules_found():
    assert 'chainer_finetune.caffe.loader' in MODULES
    assert len(MODULES) > 20


@pytest.mark.parametrize('module', sorted(MODULES))
def test_function_bodies_fit_on_a_screen(module):
    long = ['{}() at line {}: {} lines'.format(f.name, f.lineno,
                                               _body_lines(f))
            for f in _functions(_tree(module))
            if _body_lines(f) > MAX_BODY_LINES]
    assert not long, '{}: function bodies over {} lines: {}'.format(
        module, MAX_BODY_LINES, '; '.join(long))


@pytest.mark.parametrize('module', sorted(m for m in MODULES
                                          if m != PACKAGE))
def test_no_module_imports_the_package_itself(module):
    # `import chainer_finetune` (or a name from its __init__) inside the
    # package runs while the package is still being imported.
    bad = []
    for target, names, line in _imports(module):
        if target != PACKAGE:
            continue
        taken = [n for n in names if PACKAGE + '.' + n not in MODULES]
        if not names or taken:
            bad.append('line {}'.format(line))
    assert not bad, '{} imports {} itself at {}'.format(
        module, PACKAGE, ', '.join(bad))


@pytest.mark.parametrize('module', sorted(MODULES))
def test_no_private_names_taken_from_other_modules(module):
    bad = []
    for target, names, line in _imports(module):
        if not target.startswith(PACKAGE) or target == module:
            continue
        bad += ['{} from {} (line {})'.format(n, target, line)
                for n in names if n.startswith('_') and
                not n.startswith('__') and target + '.' + n not in MODULES]
    aliases = {}
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom) and \
                _resolve(module, node).startswith(PACKAGE):
            for a in node.names:
                full = _resolve(module, node) + '.' + a.name
                if full in MODULES and full != module:
                    aliases[a.asname or a.name] = full
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(PACKAGE) and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Attribute) and isinstance(
                node.value, ast.Name) and node.value.id in aliases and \
                node.attr.startswith('_') and not node.attr.startswith('__'):
            bad.append('{}.{} (line {})'.format(aliases[node.value.id],
                                                 node.attr, node.lineno))
    assert not bad, '{} reaches into private names: {}'.format(
        module, ', '.join(bad))


def test_imports_point_one_way():
    graph = {m: _internal_edges(m) for m in MODULES}
    # A package's __init__ gathers its modules' public names: the edges
    # from it down are its public face, not a dependency of those modules.
    state: Dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + '.'):
                continue   # a package importing its own submodule
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt]
                              if nxt in stack else [node, nxt])
            elif not state.get(nxt):
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module, [module])
    assert not cycles, 'import cycles: {}'.format(
        '; '.join(' -> '.join(c) for c in cycles))


@pytest.mark.parametrize('old, new', [
    ('chainer_finetune.models', 'chainer_finetune.hub'),
    ('chainer_finetune.caffe.function', 'chainer_finetune.caffe.net'),
    ('chainer_finetune.caffe.export', 'chainer_finetune.caffe.weight_files'),
])
def test_renamed_modules_still_import_under_their_old_names(old, new):
    old_module = importlib.import_module(old)
    assert old_module is importlib.import_module(new)
    package, _, name = old.rpartition('.')
    assert getattr(importlib.import_module(package), name) is old_module
