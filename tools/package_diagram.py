#!/usr/bin/env python3
"""Draw the package's layout and data flow from its own import graph.

Usage (from anywhere; paths are resolved relative to this repository)::

    python tools/package_diagram.py            # rewrite the .dot and .svg
    python tools/package_diagram.py --check    # exit 1 if the .dot is stale

The modules of ``chainer_finetune`` are read with :mod:`ast` (nothing is
imported), the way ``tests/test_package_shape.py`` reads them: one node per
module, except that each subpackage of several modules (``caffe/layers/``,
``caffe/cache/``, ``finetune/``, ``export/``, ``training/``) is one node
listing its modules. An arrow ``a -> b`` means ``b`` imports ``a``: data
and types flow along the arrows, from the bytes of a caffemodel down to the
fine-tuning job and the writers. Left out, and named in the legend: the
package facades (``__init__``), the modules under their old names, and the
foundations nearly every module imports (``errors``, ``files``,
``_compat``, ``_version``, ``caffe_pb2``), whose arrows would hide the rest.

Writes ``docs/_static/pictures/package_layout.dot`` (the graph, compared by
``tests/test_pictures.py`` with the source, so a new module or import
fails the tests until the picture is redrawn) and, with Graphviz's ``dot``
on the PATH (``apt-get install graphviz``), ``package_layout.svg``. The
docs build only reads the committed SVG.
"""

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'chainer_finetune'
OUTPUT_DIR = os.path.join(ROOT, 'docs', '_static', 'pictures')
DOT_FILE = os.path.join(OUTPUT_DIR, 'package_layout.dot')
SVG_FILE = os.path.join(OUTPUT_DIR, 'package_layout.svg')

#: Subpackages drawn as one node each (their modules listed inside).
GROUPED = ('caffe.layers', 'caffe.cache', 'finetune', 'export', 'training')
#: Imported by nearly every module: drawn in the legend, without arrows.
FOUNDATIONS = ('errors', 'files', '_compat', '_version', 'caffe.caffe_pb2')
#: Modules that are another module under its old name, and ``-m`` entry.
ALIASES = ('models', 'caffe.function', 'caffe.export', '__main__')
#: Fill colour per stage of the data flow; a module in none is grey.
STAGES = {
    'read': ('#dbeafe', ('caffe.wire', 'caffe.reader', 'caffe.upgrade')),
    'build': ('#dcfce7', ('caffe.layers', 'caffe.net', 'caffe.loader',
                          'caffe.cache', 'caffe.preprocessing', 'hub',
                          'caffe.fast_path', 'caffe.folding',
                          'caffe.fast_conv')),
    'fine-tune': ('#fef3c7', ('paths', 'copy', 'freeze', 'lr_mult', 'head',
                              'training', 'data', 'finetune',
                              'distributed')),
    'write': ('#fce7f3', ('caffe.writer', 'caffe.weight_files',
                          'caffe.zoo_shapes', 'export', 'onnx_export',
                          'onnx_graph')),
    'use': ('#ede9fe', ('prediction', 'detect', 'caffe.verify', 'cli',
                        'runtime')),
}
OTHER_COLOUR = '#e5e7eb'


def source_modules(package_dir: str) -> Dict[str, str]:
    """Module name relative to the package (``caffe.net``; ``''`` for the
    package itself) -> path of its source file."""
    found = {}
    for directory, _, files in os.walk(package_dir):
        for name in sorted(files):
            if not name.endswith('.py'):
                continue
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, package_dir)[:-3].replace(os.sep, '.')
            if rel == '__init__':
                rel = ''
            elif rel.endswith('.__init__'):
                rel = rel[:-len('.__init__')]
            found[rel] = path
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The dotted name (relative to the package) an ``ImportFrom`` names."""
    if not node.level:
        name = node.module or ''
        return name[len(PACKAGE) + 1:] if name.startswith(PACKAGE + '.') \
            else ('' if name == PACKAGE else '\0' + name)
    parts = module.split('.') if module else []
    if not is_package:
        parts = parts[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    return '.'.join(parts + ([node.module] if node.module else []))


def imported_modules(module: str, path: str, known: Set[str]) -> Set[str]:
    """The package's modules that ``module`` imports (a name taken from a
    package counts as its submodule when there is one)."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    found = set()
    is_package = path.endswith('__init__.py')
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name[len(PACKAGE) + 1:] for a in node.names
                         if a.name.startswith(PACKAGE + '.'))
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, is_package, node)
            if target.startswith('\0'):
                continue   # outside the package
            subs = [(target + '.' if target else '') + a.name
                    for a in node.names]
            subs = [s for s in subs if s in known]
            found.update(subs or [target])
    return {m for m in found if m in known and m != module}


def node_of(module: str) -> str:
    """The diagram node a module is drawn in (its group, if grouped)."""
    for group in GROUPED:
        if module == group or module.startswith(group + '.'):
            return group
    return module


def is_drawn(module: str, modules: Dict[str, str]) -> bool:
    """Facades, aliases and foundations are not nodes of the diagram."""
    if module in FOUNDATIONS or module in ALIASES:
        return False
    facade = modules[module].endswith('__init__.py') and module not in GROUPED
    return not facade


def graph(package_dir: str
          ) -> Tuple[Dict[str, List[str]], Set[Tuple[str, str]]]:
    """``({node: [its modules]}, {(imported node, importing node)})``."""
    modules = source_modules(package_dir)
    nodes: Dict[str, List[str]] = {}
    for module in sorted(modules):
        if is_drawn(module, modules):
            nodes.setdefault(node_of(module), []).append(module)
    edges = set()
    for module in modules:
        if not is_drawn(module, modules):
            continue
        for target in imported_modules(module, modules[module],
                                       set(modules)):
            if is_drawn(target, modules) and \
                    node_of(target) != node_of(module):
                edges.add((node_of(target), node_of(module)))
    return nodes, edges


def label(node: str, members: List[str]) -> str:
    """A node's text: its path, and the modules of a grouped subpackage."""
    path = node.replace('.', '/')
    if node not in GROUPED:
        return path + '.py'
    inner = sorted(m[len(node) + 1:] for m in members if m != node)
    lines, line = [], ''
    for name in inner:   # wrapped at about 20 characters
        if line and len(line) + len(name) > 20:
            lines.append(line)
            line = ''
        line += (' ' if line else '') + name
    lines.append(line)
    return path + '/\\n' + '\\n'.join(l for l in lines if l)


def stage_colour(node: str) -> str:
    """The fill colour of the stage a node belongs to."""
    for colour, members in STAGES.values():
        if node in members:
            return colour
    return OTHER_COLOUR


def legend_node(nodes: Dict[str, List[str]]) -> str:
    """The legend: what an arrow means, the stages' colours, what is left
    out (an HTML-like Graphviz label)."""
    rows = ['<tr><td align="left">arrow a &#8594; b:<br/>b imports a'
            '</td></tr>']
    rows += ['<tr><td bgcolor="{}">{}</td></tr>'.format(colour, stage)
             for stage, (colour, _) in STAGES.items()]
    rows.append('<tr><td align="left">not drawn<br/>(imported nearly<br/>'
                'everywhere):<br/>{}</td></tr>'.format('<br/>'.join(
                    m.replace('.', '/') for m in FOUNDATIONS)))
    return ('  legend [shape=plain, style="", fontsize=10, label=<<table '
            'border="0" cellborder="1" cellspacing="0" cellpadding="3" '
            'bgcolor="white">{}</table>>];'.format(''.join(rows)))


def dot_source(nodes: Dict[str, List[str]], edges: Set[Tuple[str, str]]
               ) -> str:
    """The Graphviz source of the diagram, deterministic for a given graph."""
    out = ['// Generated by tools/package_diagram.py; do not edit by hand.',
           'digraph chainer_finetune {',
           '  graph [rankdir=TB, concentrate=true, nodesep=0.08, '
           'ranksep=0.35, fontname="Helvetica", fontsize=11];',
           '  node [shape=box, style="rounded,filled", fontname="Helvetica",'
           ' fontsize=12, margin="0.1,0.04"];',
           '  edge [color="#6b7280", arrowsize=0.6];']
    for node in sorted(nodes):
        out.append('  "{}" [label="{}", fillcolor="{}"];'.format(
            node, label(node, nodes[node]), stage_colour(node)))
    for source, target in sorted(edges):
        out.append('  "{}" -> "{}";'.format(source, target))
    out.append(legend_node(nodes))
    out.append('}')
    return '\n'.join(out) + '\n'


def render_svg(dot_text: str, path: str) -> None:
    """Lays the graph out with Graphviz's ``dot`` into an SVG file."""
    dot = shutil.which('dot')
    if dot is None:
        raise SystemExit('Graphviz "dot" is not on the PATH (apt-get install '
                         'graphviz); the .dot file was written')
    done = subprocess.run([dot, '-Tsvg'], input=dot_text.encode(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          check=False)
    if done.returncode != 0:
        raise SystemExit('dot failed: ' + done.stderr.decode(errors='replace'))
    # dot writes its version into a comment: dropped, so that redrawing
    # with another Graphviz changes the file only where the picture does.
    svg = re.sub(r'<!-- Generated by graphviz.*?-->\n?', '',
                 done.stdout.decode(), count=1, flags=re.S)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(svg)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true',
                        help='only compare the committed .dot with the '
                             'source; exit 1 if it is stale')
    args = parser.parse_args(argv)
    text = dot_source(*graph(os.path.join(ROOT, PACKAGE)))
    if args.check:
        with open(DOT_FILE, encoding='utf-8') as f:
            stale = f.read() != text
        if stale:
            print('{} is stale: run python tools/package_diagram.py'.format(
                os.path.relpath(DOT_FILE, ROOT)))
        return 1 if stale else 0
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    with open(DOT_FILE, 'w', encoding='utf-8') as f:
        f.write(text)
    render_svg(text, SVG_FILE)
    print('wrote {} and {}'.format(os.path.relpath(DOT_FILE, ROOT),
                                   os.path.relpath(SVG_FILE, ROOT)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
