"""Training snapshots of SSD detectors, loaded with the deploy prototxt.

Released SSD caffemodels are often the training net: a TRAIN-phase
``AnnotatedData`` layer (the SSD fork's ``annotated_data_param`` and its
``transform_param`` fields: resize, distortion, expansion, emit
constraint), a ``MultiBoxLoss`` head, three-blob ``BatchNorm`` whose third
blob is a scale factor, and layers the deploy prototxt does not have. With
the deploy prototxt the structure comes from the prototxt and the weights
from the snapshot by layer name: the net equals the deploy net written
with the same weights and matches OpenCV reading the same two files.
"""

import logging

import chainer_finetune  # noqa: F401  (must precede `import chainer`)

import chainer  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from chainer_finetune import load_caffe  # noqa: E402
from chainer_finetune.caffe import verify  # noqa: E402
from chainer_finetune.caffe.writer import NetWriter  # noqa: E402

try:
    import cv2
except ImportError:
    cv2 = None

CLASSES = 3
SIZE = 12
#: The scale factor in BatchNorm's third blob: stored statistics are
#: ``factor`` times the real ones.
BN_FACTOR = 4.0

ANNOTATED_DATA = {
    'data_param': {'source': 'trainval_lmdb', 'batch_size': 32,
                   'backend': 'LMDB'},
    'transform_param': {
        'mirror': True, 'mean_value': [104.0, 117.0, 123.0],
        'resize_param': {'prob': 1.0, 'resize_mode': 'WARP',
                         'height': SIZE, 'width': SIZE,
                         'interp_mode': ['LINEAR', 'AREA', 'NEAREST']},
        'distort_param': {'brightness_prob': 0.5, 'brightness_delta': 32.0,
                          'contrast_prob': 0.5, 'contrast_lower': 0.5,
                          'contrast_upper': 1.5},
        'expand_param': {'prob': 0.5, 'max_expand_ratio': 4.0},
        'emit_constraint': {'emit_type': 'CENTER'}},
    'annotated_data_param': {
        'batch_sampler': [
            {'max_sample': 1, 'max_trials': 1},
            {'sampler': {'min_scale': 0.3, 'max_scale': 1.0,
                         'min_aspect_ratio': 0.5, 'max_aspect_ratio': 2.0},
             'sample_constraint': {'min_jaccard_overlap': 0.1},
             'max_sample': 1, 'max_trials': 50}],
        'label_map_file': 'labelmap_voc.prototxt'},
}

MULTIBOX_LOSS = {'multibox_loss_param': {
    'loc_loss_type': 'SMOOTH_L1', 'conf_loss_type': 'SOFTMAX',
    'loc_weight': 1.0, 'num_classes': CLASSES, 'share_location': True,
    'match_type': 'PER_PREDICTION', 'overlap_threshold': 0.5,
    'use_prior_for_matching': True, 'background_label_id': 0,
    'use_difficult_gt': True, 'neg_pos_ratio': 3.0, 'neg_overlap': 0.5,
    'code_type': 'CENTER_SIZE', 'ignore_cross_boundary_bbox': False,
    'mining_type': 'MAX_NEGATIVE'},
    'loss_param': {'normalization': 'VALID'}}


def weights(seed=0):
    """The learned blobs by layer name, shared by both nets."""
    rng = np.random.RandomState(seed)
    mean, var = rng.normal(0, 0.5, 8), rng.uniform(0.5, 2.0, 8)
    return {
        'conv1': [rng.normal(0, 0.2, (8, 3, 3, 3)), rng.normal(0, 0.1, 8)],
        # Caffe's running sums: statistics times the factor, then the factor.
        'bn1': [mean * BN_FACTOR, var * BN_FACTOR, [BN_FACTOR]],
        'scale1': [rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.1, 8)],
        'loc': [rng.normal(0, 0.2, (8, 8, 3, 3)), rng.normal(0, 0.1, 8)],
        'conf': [rng.normal(0, 0.6, (2 * CLASSES, 8, 3, 3)),
                 rng.normal(0, 0.3, 2 * CLASSES)],
        # A training-only branch the deploy prototxt does not have.
        'aux': [rng.normal(0, 0.2, (4, 8, 1, 1))],
    }


def add_trunk(w, blobs, train):
    """Convolution, three-blob BatchNorm (in place), Scale, ReLU and the
    SSD head's location and confidence branches with their priors."""
    w.layer('conv1', 'Convolution', 'data', 'conv1', blobs=blobs['conv1'],
            params={'convolution_param': {'num_output': 8, 'kernel_size': 3,
                                          'pad': 1}})
    w.layer('bn1', 'BatchNorm', 'conv1', 'conv1', blobs=blobs['bn1'],
            params={} if train else
            {'batch_norm_param': {'use_global_stats': True}})
    w.layer('scale1', 'Scale', 'conv1', 'conv1', blobs=blobs['scale1'],
            params={'scale_param': {'bias_term': True}})
    w.layer('relu1', 'ReLU', 'conv1', 'conv1')
    for part in ('loc', 'conf'):
        outputs = len(blobs[part][1])
        w.layer(part, 'Convolution', 'conv1', part, blobs=blobs[part],
                params={'convolution_param': {'num_output': outputs,
                                              'kernel_size': 3, 'pad': 1}})
        w.layer(part + '_perm', 'Permute', part, part + '_perm',
                params={'permute_param': {'order': [0, 2, 3, 1]}})
        w.layer(part + '_flat', 'Flatten', part + '_perm', part + '_flat')
    w.layer('priorbox', 'PriorBox', ['conv1', 'data'], 'priorbox',
            params={'prior_box_param': {
                'min_size': [3.0], 'max_size': [6.0], 'flip': True,
                'clip': False, 'variance': [0.1, 0.1, 0.2, 0.2]}})


def snapshot_writer(seed=0):
    """The training net, as a snapshot's binary holds it."""
    blobs = weights(seed)
    w = NetWriter('ssd_train')
    w.layer('data', 'AnnotatedData', (), ['data', 'label'],
            include={'phase': 'TRAIN'}, params=ANNOTATED_DATA)
    add_trunk(w, blobs, train=True)
    w.layer('aux', 'Convolution', 'conv1', 'aux', blobs=blobs['aux'],
            params={'convolution_param': {'num_output': 4, 'kernel_size': 1,
                                          'bias_term': False}})
    w.layer('mbox_loss', 'MultiBoxLoss',
            ['loc_flat', 'conf_flat', 'priorbox', 'label'], 'mbox_loss',
            include={'phase': 'TRAIN'}, params=MULTIBOX_LOSS)
    return w


def deploy_writer(seed=0):
    """The deploy net: Input, the trunk, softmax scores, DetectionOutput."""
    w = NetWriter('ssd_deploy')
    w.input('data', (1, 3, SIZE, SIZE))
    add_trunk(w, weights(seed), train=False)
    w.layer('conf_reshape', 'Reshape', 'conf_flat', 'conf_reshape',
            params={'reshape_param': {'shape': {'dim': [0, -1, CLASSES]}}})
    w.layer('conf_softmax', 'Softmax', 'conf_reshape', 'conf_softmax',
            params={'softmax_param': {'axis': 2}})
    w.layer('conf_scores', 'Flatten', 'conf_softmax', 'conf_scores')
    w.layer('detection_out', 'DetectionOutput',
            ['loc_flat', 'conf_scores', 'priorbox'], 'detection_out',
            params={'detection_output_param': {
                'num_classes': CLASSES, 'share_location': True,
                'background_label_id': 0, 'code_type': 'CENTER_SIZE',
                'keep_top_k': 20, 'confidence_threshold': 0.3,
                'nms_param': {'nms_threshold': 0.45, 'top_k': 30}}})
    return w


@pytest.fixture
def files(tmp_path):
    """(snapshot caffemodel, deploy caffemodel, deploy prototxt)."""
    snapshot = str(tmp_path / 'ssd_iter_1000.caffemodel')
    deploy_model = str(tmp_path / 'deploy.caffemodel')
    deploy_prototxt = str(tmp_path / 'deploy.prototxt')
    snapshot_writer().write_caffemodel(snapshot)
    deploy = deploy_writer()
    deploy.write_caffemodel(deploy_model)
    deploy.write_prototxt(deploy_prototxt)
    return snapshot, deploy_model, deploy_prototxt


def blobs_of(net, x):
    """Every blob of the net (test mode) on input ``x``."""
    outputs = [top for _, _, tops in net.layers for top in tops]
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        values = net.forward({'data': x}, outputs)
    return {name: v.array for name, v in zip(outputs, values)}


def test_the_snapshot_holds_what_training_nets_hold(files):
    from chainer_finetune.caffe import caffe_pb2
    snapshot, _, _ = files
    with open(snapshot, 'rb') as f:
        net = caffe_pb2.NetParameter.FromString(f.read())
    layers = {layer.name: layer for layer in net.layer}
    data = layers['data']
    assert data.include[0].phase == caffe_pb2.TRAIN
    assert data.transform_param.resize_param.height == SIZE
    assert data.transform_param.expand_param.max_expand_ratio == 4.0
    assert data.annotated_data_param.batch_sampler[1].max_trials == 50
    assert layers['mbox_loss'].multibox_loss_param.num_classes == CLASSES
    assert [len(b.data) for b in layers['bn1'].blobs] == [8, 8, 1]
    assert layers['bn1'].blobs[2].data[0] == BN_FACTOR
    assert 'aux' in layers


def test_snapshot_with_deploy_prototxt_equals_the_deploy_net(files, caplog):
    snapshot, deploy_model, deploy_prototxt = files
    with caplog.at_level(logging.WARNING, logger='chainer_finetune'):
        ours = load_caffe(snapshot, deploy_prototxt)
    # Every field is in the schema: nothing skipped, nothing to warn about.
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    reference = load_caffe(deploy_model, deploy_prototxt)
    assert [name for name, _, _ in ours.layers] == \
        [name for name, _, _ in reference.layers]
    assert 'aux' not in ours.link_names and 'mbox_loss' not in ours.forwards
    params = dict(ours.namedparams())
    for name, param in reference.namedparams():
        np.testing.assert_array_equal(params[name].array, param.array,
                                      err_msg=name)
    # The scale factor divided out: the real statistics.
    stats = weights()['bn1']
    np.testing.assert_allclose(ours['bn1'].avg_mean,
                               np.asarray(stats[0]) / BN_FACTOR, rtol=1e-6)
    np.testing.assert_allclose(ours['bn1'].avg_var,
                               np.asarray(stats[1]) / BN_FACTOR, rtol=1e-6)
    x = np.random.RandomState(1).uniform(-1, 1, (1, 3, SIZE, SIZE)).astype(
        np.float32)
    got, expected = blobs_of(ours, x), blobs_of(reference, x)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name],
                                      err_msg=name)
    assert (expected['detection_out'][0, 0, :, 1] > 0).sum() >= 3


@pytest.mark.skipif(cv2 is None, reason='needs OpenCV 4.x')
def test_snapshot_with_deploy_prototxt_matches_opencv(files):
    snapshot, _, deploy_prototxt = files
    rows = verify.compare_with_opencv(snapshot, deploy_prototxt, seed=2)
    assert all(r.compared for r in rows), verify.format_comparison(rows)
    bad = [r for r in rows if not r.rel_l2 <= 1e-5]
    assert not bad, verify.format_comparison(rows, 1e-5)
    det = rows[-1]
    assert det.detections is not None and det.detections.matched >= 3


def test_snapshot_alone_is_its_test_phase_trunk(files):
    snapshot, deploy_model, deploy_prototxt = files
    net = load_caffe(snapshot)
    # The TRAIN-only data and loss layers drop out; `data` is an input.
    assert net.inputs == {'data': None}
    assert [name for name, _, _ in net.layers] == [
        'conv1', 'bn1', 'scale1', 'relu1', 'loc', 'loc_perm', 'loc_flat',
        'conf', 'conf_perm', 'conf_flat', 'priorbox', 'aux']
    x = np.random.RandomState(3).uniform(-1, 1, (1, 3, SIZE, SIZE)).astype(
        np.float32)
    got = blobs_of(net, x)
    expected = blobs_of(load_caffe(deploy_model, deploy_prototxt), x)
    for name in ('conv1', 'loc_flat', 'conf_flat', 'priorbox'):
        np.testing.assert_array_equal(got[name], expected[name],
                                      err_msg=name)
