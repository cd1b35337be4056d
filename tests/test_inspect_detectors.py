"""``chainer-finetune inspect`` on the two public SSD detectors: the SSD
layers (Normalize, Permute, PriorBox, DetectionOutput) appear with their
output shapes.

Marked ``network`` (fetched once, as tests/test_detector_models.py does).
"""

import json

import chainer_finetune  # noqa: F401  (must precede `import chainer`)

import pytest  # noqa: E402

from chainer_finetune import cli  # noqa: E402

from detector_files import fetch_detector  # noqa: E402

pytestmark = pytest.mark.network

#: Per detector: feature maps (side) of its six prior boxes and priors per
#: cell, its Normalize layers, classes of its DetectionOutput.
EXPECTED = {
    'res10_ssd_face': {
        'maps': [38, 19, 10, 5, 5, 5], 'per_cell': [4, 6, 6, 6, 4, 4],
        'normalize': {'conv4_3_norm': [1, 128, 38, 38]}, 'classes': 2},
    'mobilenet_ssd_voc': {
        'maps': [19, 10, 5, 3, 2, 1], 'per_cell': [3, 6, 6, 6, 6, 6],
        'normalize': {}, 'classes': 21},
}


def inspect(name, capsys, *extra):
    files = fetch_detector(name)
    assert cli.main(['inspect', files.caffemodel, '--prototxt',
                     files.prototxt] + list(extra)) == 0
    return capsys.readouterr().out


@pytest.fixture(params=sorted(EXPECTED))
def detector(request, capsys):
    report = json.loads(inspect(request.param, capsys, '--json'))
    by_type = {}
    for row in report['layers']:
        by_type.setdefault(row['type'], []).append(row)
    return request.param, report, by_type


def test_prior_boxes_have_the_shapes_of_their_feature_maps(detector):
    name, _, by_type = detector
    expected = EXPECTED[name]
    priors = [row['output'][0] for row in by_type['PriorBox']]
    assert priors == [[1, 2, side * side * n * 4] for side, n in
                      zip(expected['maps'], expected['per_cell'])]
    total = sum(shape[2] for shape in priors)
    concat = [row for row in by_type['Concat']
              if row['tops'] == ['mbox_priorbox']]
    assert concat[0]['output'] == [[1, 2, total]]


def test_permutes_move_channels_last(detector):
    name, _, by_type = detector
    expected = EXPECTED[name]
    permutes = {row['name']: row['output'][0] for row in by_type['Permute']}
    # Box corners (4) and class scores of each prior, for six feature maps.
    for kind, width in (('loc', 4), ('conf', expected['classes'])):
        shapes = [shape for layer, shape in permutes.items()
                  if '_mbox_{}_perm'.format(kind) in layer]
        assert shapes == [[1, side, side, n * width] for side, n in
                          zip(expected['maps'], expected['per_cell'])]


def test_normalize_and_detection_output(detector):
    name, _, by_type = detector
    expected = EXPECTED[name]
    normalize = {row['name']: row for row in by_type.get('Normalize', [])}
    assert {k: v['output'][0] for k, v in normalize.items()} == \
        expected['normalize']
    for row in normalize.values():   # one learned scale per channel
        assert row['params'] == {'W': [row['output'][0][1]]}
    det, = by_type['DetectionOutput']
    assert det['bottoms'] == ['mbox_loc', 'mbox_conf_flatten',
                              'mbox_priorbox']
    shape = det['output'][0]
    assert shape[:2] == [1, 1] and shape[3] == 7 and shape[2] >= 1
    assert det['param_count'] == 0


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_the_table_lists_the_ssd_layers(name, capsys):
    out = inspect(name, capsys)
    lines = out.splitlines()
    types = {'Permute', 'PriorBox', 'DetectionOutput'}
    if name == 'res10_ssd_face':
        types.add('Normalize')
    for type_ in types:
        rows = [line.split() for line in lines
                if len(line.split()) > 1 and line.split()[1] == type_]
        assert rows, type_
    det = [line.split() for line in lines
           if 'DetectionOutput' in line.split()]
    assert det[0][0] == 'detection_out'
    assert det[0][-2].startswith('1x1x') and det[0][-2].endswith('x7')
    prior = [line.split() for line in lines if 'PriorBox' in line.split()]
    assert prior[0][-2] == '1x2x{}'.format(
        EXPECTED[name]['maps'][0] ** 2 * EXPECTED[name]['per_cell'][0] * 4)
