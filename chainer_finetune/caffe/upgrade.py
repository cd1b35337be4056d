"""Bring any stored Caffe net to one form: V2 layers, inputs as Input layers.

Caffe does the same when it loads a net (``upgrade_proto.cpp``): V1
``layers`` with enum types become ``layer`` entries with type strings,
``blobs_lr``/``weight_decay`` become ``param { lr_mult decay_mult }``, and the
net-level ``input``/``input_dim``/``input_shape`` fields become an ``Input``
layer. Layers that the net state (phase TEST, as for a deployed net)
excludes are dropped, as Caffe's ``FilterNet`` does.
"""

from __future__ import annotations

import logging
from typing import (Dict, FrozenSet, Iterable, List, NamedTuple, Optional,
                    Tuple)

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.reader import Blob
from chainer_finetune.caffe.reader import CaffeModelFile
from chainer_finetune.caffe.reader import unknown_varint
from chainer_finetune.errors import CaffeModelError

logger = logging.getLogger(__name__)

# V1LayerParameter.LayerType names -> V2 type strings (upgrade_proto.cpp).
V1_TYPE_NAMES = {
    'ABSVAL': 'AbsVal', 'ACCURACY': 'Accuracy', 'ARGMAX': 'ArgMax',
    'BNLL': 'BNLL', 'CONCAT': 'Concat', 'CONTRASTIVE_LOSS': 'ContrastiveLoss',
    'CONVOLUTION': 'Convolution', 'DATA': 'Data',
    'DECONVOLUTION': 'Deconvolution', 'DROPOUT': 'Dropout',
    'DUMMY_DATA': 'DummyData', 'EUCLIDEAN_LOSS': 'EuclideanLoss',
    'ELTWISE': 'Eltwise', 'EXP': 'Exp', 'FLATTEN': 'Flatten',
    'HDF5_DATA': 'HDF5Data', 'HDF5_OUTPUT': 'HDF5Output',
    'HINGE_LOSS': 'HingeLoss', 'IM2COL': 'Im2col', 'IMAGE_DATA': 'ImageData',
    'INFOGAIN_LOSS': 'InfogainLoss', 'INNER_PRODUCT': 'InnerProduct',
    'LRN': 'LRN', 'MEMORY_DATA': 'MemoryData',
    'MULTINOMIAL_LOGISTIC_LOSS': 'MultinomialLogisticLoss', 'MVN': 'MVN',
    'POOLING': 'Pooling', 'POWER': 'Power', 'RELU': 'ReLU',
    'SIGMOID': 'Sigmoid',
    'SIGMOID_CROSS_ENTROPY_LOSS': 'SigmoidCrossEntropyLoss',
    'SILENCE': 'Silence', 'SOFTMAX': 'Softmax',
    'SOFTMAX_LOSS': 'SoftmaxWithLoss', 'SPLIT': 'Split', 'SLICE': 'Slice',
    'TANH': 'TanH', 'WINDOW_DATA': 'WindowData', 'THRESHOLD': 'Threshold',
}

# ParamSpec fields and the V1 lists that hold them, one value per blob.
V1_PARAM_SPEC_LISTS = (('name', 'param'), ('share_mode', 'blob_share_mode'),
                       ('lr_mult', 'blobs_lr'), ('decay_mult', 'weight_decay'))


class NetDescription(NamedTuple):
    """A net ready to be built: structure plus weights by layer name.

    Attributes:
        name: The net's name.
        layers: V2 layer descriptions without blobs, in execution order,
            inputs declared by ``Input`` layers.
        weights: Blobs by layer name.
        source: Where structure and weights came from, for messages.
        phase_dropped_tops: Tops of the layers the phase filter dropped (a
            training net's TRAIN-only data layer): a bottom among them that
            no kept layer produces becomes an input without a declared
            shape; any other such bottom is an error, as in Caffe.
    """

    name: str
    layers: List[caffe_pb2.LayerParameter]
    weights: Dict[str, List[Blob]]
    source: str
    phase_dropped_tops: FrozenSet[str] = frozenset()


_V1_TYPE_FIELD = caffe_pb2.V1LayerParameter.DESCRIPTOR.fields_by_name[
    'type'].number


def _v1_type_name(layer: caffe_pb2.V1LayerParameter) -> str:
    enum = caffe_pb2.V1LayerParameter.LayerType
    name = enum.Name(layer.type) if layer.type in enum.values() else None
    if name not in V1_TYPE_NAMES:   # NONE included
        # A code the schema lacks reads as NONE (0): report the stored one.
        stored = unknown_varint(layer, _V1_TYPE_FIELD)
        raise CaffeModelError('V1 layer {!r} has unknown type code {}'.format(
            layer.name, layer.type if stored is None else stored))
    return V1_TYPE_NAMES[name]


def copy_shared_layer_fields(source, target) -> None:
    """Copies the fields a V1 and a V2 layer description hold alike (name,
    bottom, top, loss_weight, include, exclude) from ``source`` to
    ``target``, in either direction."""
    target.name = source.name
    target.bottom.extend(source.bottom)
    target.top.extend(source.top)
    target.loss_weight.extend(source.loss_weight)
    target.include.extend(source.include)
    target.exclude.extend(source.exclude)


def upgrade_v1_layer(v1: caffe_pb2.V1LayerParameter
                     ) -> caffe_pb2.LayerParameter:
    """Converts one V1 layer description (without its blobs) to V2."""
    if v1.HasField('layer'):
        raise CaffeModelError(
            "layer {!r} is in the V0 format (2013); upgrade it with Caffe's "
            'upgrade_net_proto_text/binary first'.format(v1.layer.name))
    v2 = caffe_pb2.LayerParameter()
    copy_shared_layer_fields(v1, v2)
    v2.type = _v1_type_name(v1)
    lists = [(field, getattr(v1, v1_list))
             for field, v1_list in V1_PARAM_SPEC_LISTS]
    for i in range(max(len(values) for _, values in lists)):
        spec = v2.param.add()
        for field, values in lists:
            if i < len(values):
                setattr(spec, field, values[i])
    v2_fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    for field, value in v1.ListFields():
        if field.name.endswith('_param') and field.name in v2_fields:
            getattr(v2, field.name).CopyFrom(value)
    return v2


def _input_layer(net: caffe_pb2.NetParameter, where: str
                 ) -> Optional[caffe_pb2.LayerParameter]:
    if not net.input:
        if net.input_dim or net.input_shape:
            raise CaffeModelError('{}: input_dim/input_shape given without '
                                  'input names'.format(where))
        return None
    layer = caffe_pb2.LayerParameter(name='input', type='Input')
    layer.top.extend(net.input)
    n = len(net.input)
    if net.input_shape:
        if len(net.input_shape) != n:
            raise CaffeModelError(
                '{}: {} inputs but {} input_shape entries'.format(
                    where, n, len(net.input_shape)))
        layer.input_param.shape.extend(net.input_shape)
    elif net.input_dim:
        if len(net.input_dim) != 4 * n:
            raise CaffeModelError(
                '{}: {} inputs need {} input_dim values (4 each), found '
                '{}'.format(where, n, 4 * n, len(net.input_dim)))
        for i in range(n):
            layer.input_param.shape.add().dim.extend(
                net.input_dim[4 * i:4 * i + 4])
    return layer


def training_input_layer(tops: Iterable[str]) -> caffe_pb2.LayerParameter:
    """A TRAIN-only data layer with ``tops``: in a written structure, the
    inputs that came from a layer the TEST phase dropped (a training net's
    data layer) are declared this way, so that reading it back makes them
    inputs again (:attr:`NetDescription.phase_dropped_tops`)."""
    layer = caffe_pb2.LayerParameter(name='train_data', type='Data')
    layer.top.extend(tops)
    layer.include.add(phase=caffe_pb2.TRAIN)
    return layer


def _rule_matches(rule: caffe_pb2.NetStateRule,
                  state: caffe_pb2.NetState) -> bool:
    # Caffe's Net::StateMeetsRule.
    return not (
        (rule.HasField('phase') and rule.phase != state.phase) or
        (rule.HasField('min_level') and state.level < rule.min_level) or
        (rule.HasField('max_level') and state.level > rule.max_level) or
        any(stage not in state.stage for stage in rule.stage) or
        any(stage in state.stage for stage in rule.not_stage))


def _included(layer: caffe_pb2.LayerParameter,
              state: caffe_pb2.NetState) -> bool:
    # Caffe's Net::FilterNet.
    if layer.include:
        return any(_rule_matches(r, state) for r in layer.include)
    return not any(_rule_matches(r, state) for r in layer.exclude)


def to_v2_layers(net: caffe_pb2.NetParameter,
                 layers: Iterable, version: int, where: str,
                 phase: int = caffe_pb2.TEST
                 ) -> List[caffe_pb2.LayerParameter]:
    """The layers of a net as V2 descriptions, inputs first, filtered.

    Args:
        net: The net-level fields (for ``input*`` and ``state``).
        layers: V2 ``LayerParameter`` or V1 ``V1LayerParameter`` messages.
        version: 1 or 2, the kind of ``layers``.
        where: File name for error messages.
        phase: The phase whose layers are kept (``caffe_pb2.TEST`` for a
            deployed net).
    """
    return _split_by_phase(net, layers, version, where, phase)[0]


def _split_by_phase(net: caffe_pb2.NetParameter, layers: Iterable,
                    version: int, where: str, phase: int = caffe_pb2.TEST
                    ) -> Tuple[List[caffe_pb2.LayerParameter],
                               FrozenSet[str]]:
    """:func:`to_v2_layers`, and the tops of the layers it dropped."""
    state = caffe_pb2.NetState()
    state.CopyFrom(net.state)
    state.phase = phase
    input_layer = _input_layer(net, where)
    result = [] if input_layer is None else [input_layer]
    dropped_tops = set()
    for layer in layers:
        if version == 1:
            try:
                layer = upgrade_v1_layer(layer)
            except CaffeModelError as e:
                raise CaffeModelError('{}: {}'.format(where, e)) from None
        if _included(layer, state):
            result.append(layer)
        else:
            dropped_tops.update(layer.top)
            logger.debug('%s: layer %r (%s) is not part of the %s phase',
                         where, layer.name, layer.type,
                         caffe_pb2.Phase.Name(phase))
    return result, frozenset(dropped_tops)


def describe(model: CaffeModelFile,
             prototxt: Optional[caffe_pb2.NetParameter] = None,
             prototxt_path: Optional[str] = None) -> NetDescription:
    """Combines a caffemodel with an optional prototxt into one description.

    With a prototxt, the structure comes from it and the weights are taken
    from the caffemodel by layer name; layers of the caffemodel that the
    prototxt does not use (training-only heads, data layers) are listed at
    debug level and ignored. Without one, the caffemodel's own structure is
    used.
    """
    weights: Dict[str, List[Blob]] = {}
    for record in model.layers:
        if record.blobs:
            if record.param.name in weights:
                raise CaffeModelError(
                    '{}: two layers named {!r} hold weights'.format(
                        model.path, record.param.name))
            weights[record.param.name] = record.blobs
    if prototxt is None:
        layers, dropped = _split_by_phase(
            model.net, [r.param for r in model.layers], model.version,
            model.path)
        return NetDescription(model.net.name, layers, weights, model.path,
                              dropped)
    where = prototxt_path or 'prototxt'
    if prototxt.layer and prototxt.layers:
        raise CaffeModelError('{}: mixes V1 (`layers`) and V2 (`layer`) '
                              'layers; Caffe cannot load that either'
                              .format(where))
    layers, dropped = _split_by_phase(
        prototxt, prototxt.layer or prototxt.layers,
        2 if prototxt.layer else 1, where)
    used = {layer.name for layer in layers}
    unused = sorted(name for name in weights if name not in used)
    if unused:
        logger.debug('%s: weights of layers not in %s ignored: %s',
                     model.path, where, ', '.join(unused))
    return NetDescription(prototxt.name or model.net.name, layers,
                          {k: v for k, v in weights.items() if k in used},
                          '{} + {}'.format(where, model.path), dropped)
