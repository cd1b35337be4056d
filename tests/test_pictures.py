"""The docs' pictures: present, small, drawn from what they claim.

The package diagram is compared with the package's import graph as it is
now (a new module or import fails here until ``python
tools/package_diagram.py`` redraws it), and every node it draws must be
named in docs/architecture.rst. Each chart's SVG must show the numbers of
the data file written beside it by the same run.
"""

import importlib.util
import json
import os
import re
import xml.etree.ElementTree as ElementTree

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs')
PICTURES = os.path.join(DOCS, '_static', 'pictures')
#: All pictures together stay under this (the repository stays small).
MAX_TOTAL_BYTES = 600_000


def _tool(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, 'tools', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


diagram = _tool('package_diagram')


def _read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def test_committed_diagram_is_the_package_as_it_is():
    expected = diagram.dot_source(*diagram.graph(
        os.path.join(ROOT, 'chainer_finetune')))
    assert _read(diagram.DOT_FILE) == expected, (
        'docs/_static/pictures/package_layout.dot is stale: run '
        'python tools/package_diagram.py (needs graphviz) and commit the '
        '.dot and .svg')


def test_committed_svg_draws_every_node_of_the_dot():
    nodes = re.findall(r'^  "([^"]+)" \[label', _read(diagram.DOT_FILE),
                       re.M)
    svg = _read(diagram.SVG_FILE)
    assert len(nodes) > 20
    missing = [n for n in nodes if '<title>{}</title>'.format(n) not in svg]
    assert not missing, 'the SVG was drawn from another .dot: {}'.format(
        missing)


def test_every_node_of_the_diagram_is_described_in_architecture_rst():
    nodes, _ = diagram.graph(os.path.join(ROOT, 'chainer_finetune'))
    text = _read(os.path.join(DOCS, 'architecture.rst'))
    missing = [node for node in nodes
               if '``{}``'.format(diagram.label(node, []).split('\\n')[0])
               not in text]
    assert not missing, 'modules drawn but not in architecture.rst: {}'.format(
        missing)


def test_every_module_is_drawn_or_named_as_left_out():
    package = os.path.join(ROOT, 'chainer_finetune')
    modules = diagram.source_modules(package)
    nodes, _ = diagram.graph(package)
    drawn = {m for members in nodes.values() for m in members}
    left_out = set(modules) - drawn
    facades = {m for m in left_out if modules[m].endswith('__init__.py')}
    assert left_out - facades == set(diagram.FOUNDATIONS) | set(
        diagram.ALIASES)
    assert 'caffe.layers.registry' in nodes['caffe.layers']


def _package(tmp_path, files):
    root = tmp_path / 'chainer_finetune'
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


def test_graph_resolves_absolute_relative_and_from_package_imports(tmp_path):
    package = _package(tmp_path, {
        '__init__.py': 'from chainer_finetune.copy import copy_model\n',
        'errors.py': '',
        'copy.py': 'from chainer_finetune import errors, paths\n',
        'paths.py': 'import os\n',
        'cli.py': 'import chainer_finetune.copy\n'
                  'from .finetune import run\n',
        'finetune/__init__.py': 'from .run import main\n',
        'finetune/run.py': 'from ..copy import copy_model\n'
                           'from . import config\n',
        'finetune/config.py': 'from chainer_finetune.paths import x\n',
    })
    nodes, edges = diagram.graph(package)
    assert sorted(nodes) == ['cli', 'copy', 'finetune', 'paths']
    assert nodes['finetune'] == ['finetune', 'finetune.config',
                                 'finetune.run']
    # errors is a foundation: no arrows; the package __init__ is a facade.
    assert edges == {('paths', 'copy'), ('copy', 'cli'),
                     ('finetune', 'cli'), ('copy', 'finetune'),
                     ('paths', 'finetune')}
    assert diagram.label('finetune', nodes['finetune']) == \
        'finetune/\\nconfig run'


def test_pictures_are_used_by_the_docs_and_small():
    used = ''.join(_read(os.path.join(DOCS, name))
                   for name in os.listdir(DOCS) if name.endswith('.rst'))
    images = [name for name in os.listdir(PICTURES)
              if name.endswith(('.svg', '.png'))]
    assert len(images) >= 4
    unused = [n for n in images if '_static/pictures/' + n not in used]
    assert not unused, 'pictures no page shows: {}'.format(unused)
    referenced = re.findall(r'_static/(?:pictures|detection)/[\w.]+', used)
    absent = [r for r in referenced
              if not os.path.exists(os.path.join(DOCS, r))]
    assert not absent, 'pages show pictures that are not there: {}'.format(
        absent)
    total = sum(os.path.getsize(os.path.join(PICTURES, n))
                for n in os.listdir(PICTURES))
    assert total < MAX_TOTAL_BYTES


@pytest.mark.parametrize('name', sorted(
    n for n in os.listdir(PICTURES) if n.endswith('.svg')))
def test_svg_is_well_formed_with_a_size(name):
    # A browser shows nothing for an SVG that is not well-formed XML.
    root = ElementTree.parse(os.path.join(PICTURES, name)).getroot()
    assert root.tag == '{http://www.w3.org/2000/svg}svg'
    assert float(re.match(r'[\d.]+', root.get('width')).group()) > 100


def _svg_text(name):
    return _read(os.path.join(PICTURES, name + '.svg'))


def test_load_chart_shows_its_measurements():
    data = json.loads(_read(os.path.join(PICTURES, 'load_benchmark.json')))
    svg = _svg_text('load_benchmark')
    modes = [row['mode'] for row in data['rows']]
    assert {'floor', 'caffefunction', 'opencv', 'load_caffe'} <= set(modes)
    for row in data['rows']:
        assert '{:.2f} s (wall {:.2f} s)'.format(
            row['cpu_seconds'], row['seconds']) in svg, row['label']
        net = (row['peak'] - data['baseline_peak']) / data['file_bytes']
        assert '{:.2f}x'.format(net) in svg, row['label']
    # Every loader loaded every weight of VGG-16.
    assert {row['values'] for row in data['rows']} == {138_357_544}


def test_parity_chart_shows_every_model_below_the_tests_tolerance():
    data = json.loads(_read(os.path.join(PICTURES, 'parity.json')))
    svg = _svg_text('parity')
    assert [m['name'] for m in data['models']] == \
        ['open_nsfw', 'res10_ssd_face', 'mobilenet_ssd_voc']
    for model in data['models']:
        assert model['name'] in svg
        assert sorted(model['worst_by_photo']) == sorted(data['photos'])
        assert 0 < max(model['worst_by_photo'].values()) < 1e-4


def test_accuracy_chart_shows_the_final_accuracy_of_every_run():
    data = json.loads(_read(os.path.join(PICTURES, 'demo_accuracy.json')))
    svg = _svg_text('demo_accuracy')
    assert len(data) >= 1
    for seed, runs in data.items():
        assert len(runs['pretrained']) == len(runs['scratch']) == 10
        for values in runs.values():
            assert '{:.3f}'.format(values[-1]) in svg
        # What the demo shows: pretrained ahead of scratch after training.
        assert runs['pretrained'][-1] > runs['scratch'][-1], seed
