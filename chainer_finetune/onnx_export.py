"""Writing a Chainer model as an ONNX file: :func:`export_onnx`.

The graph is traced by onnx-chainer 1.6.0 (imported through the shims of
:func:`chainer_finetune._compat.import_onnx_chainer`) in inference mode and
then rewritten by :mod:`chainer_finetune.onnx_graph`: free batch
dimension, constants as initializers, BatchNorm/Scale folded into the
convolutions. See :doc:`/deploy`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import chainer
import numpy

from chainer_finetune import _compat
from chainer_finetune.caffe.net import CaffeNet
from chainer_finetune.errors import OnnxExportError
from chainer_finetune.errors import OnnxUnavailableError
from chainer_finetune.files import PathLike
from chainer_finetune.files import atomic_output
from chainer_finetune.files import ensure_absent

logger = logging.getLogger(__name__)

#: The opset written by default: the newest one onnx-chainer 1.6.0 was
#: tested with (it warns above it), implemented by every onnxruntime since
#: 1.0, TensorRT's ONNX parser and OpenVINO.
DEFAULT_OPSET = 11
#: The opsets onnx-chainer 1.6.0 supports.
OPSETS = range(7, 12)

#: Names of the graph's input and output.
INPUT_NAME = 'input'
OUTPUT_NAME = 'output'

_INSTALL_HINT = ("pip install 'chainer_finetune[onnx]' && "
                 "pip install --no-deps onnx-chainer==1.6.0")


def import_onnx_chainer() -> Any:
    """The ``onnx_chainer`` module, shimmed for the installed onnx.

    Raises:
        OnnxUnavailableError: onnx or onnx-chainer is not installed.
    """
    try:
        return _compat.import_onnx_chainer()
    except ImportError as e:
        raise OnnxUnavailableError(
            'ONNX export needs onnx and onnx-chainer ({}); install them '
            'with: {}'.format(e, _INSTALL_HINT)) from e


class _Traced(chainer.Chain):
    """A Chain that runs ``forward`` and shows onnx-chainer ``model``'s
    parameters under their own names, without adopting ``model`` as a
    child (which would rename it)."""

    def __init__(self, model: chainer.Link,
                 forward: Callable[[Any], Any]) -> None:
        super().__init__()
        self._model = model
        self._forward = forward

    def namedparams(self, include_uninit: bool = True
                    ) -> Iterator[Tuple[str, chainer.Parameter]]:
        return self._model.namedparams(include_uninit)

    def namedlinks(self, skipself: bool = False
                   ) -> Iterator[Tuple[str, chainer.Link]]:
        return self._model.namedlinks(skipself)

    def forward(self, x: chainer.Variable) -> chainer.Variable:
        return self._forward(x)


def _caffe_forward(net: CaffeNet, input_name: Optional[str],
                   output_name: Optional[str]) -> Callable[[Any], Any]:
    if input_name is None:
        if len(net.inputs) != 1:
            raise OnnxExportError(
                'the net has {} inputs ({}); name the one to export with '
                'input_name'.format(len(net.inputs), sorted(net.inputs)))
        input_name = next(iter(net.inputs))
    if output_name is None:
        output_name = net.layers[-1][2][0]

    def forward(x: chainer.Variable) -> chainer.Variable:
        y, = net(inputs={input_name: x}, outputs=[output_name])
        return y
    return forward


def _export_batch(model: chainer.Link, input_shape: Sequence[int]) -> int:
    """A batch size for the trace that no parameter or input dimension
    equals, so that a shape constant holding it is the batch."""
    taken = set(input_shape)
    for param in model.params():
        if param.array is not None:
            taken.update(param.shape)
    batch = 2
    while batch in taken:
        batch += 1
    return batch


def _function_layer(net: CaffeNet, function: str) -> Optional[str]:
    """The first Caffe layer whose own computation (between its bottoms'
    and its tops' variables, as the last forward left them) used a Chainer
    function of that name."""
    variables = getattr(net, 'variables', {})
    for name, bottoms, tops in net.layers:
        stop = {id(variables[b].node) for b in bottoms if b in variables}
        todo = [variables[t].node for t in tops if t in variables]
        seen = set()
        while todo:
            node = todo.pop()
            creator = node.creator_node
            if id(node) in stop or creator is None or id(creator) in seen:
                continue
            seen.add(id(creator))
            if type(creator).__name__ == function:
                return name
            todo.extend(creator.inputs)
    return None


def _unsupported(model: chainer.Link, error: Exception) -> OnnxExportError:
    function = str(error).split(' ')[0]
    layers = [(net_name, _function_layer(net, function))
              for net_name, net in model.namedlinks()
              if isinstance(net, CaffeNet)]
    where = ['layer {!r}{}'.format(layer, ' of ' + n if n != '/' else '')
             for n, layer in layers if layer]
    return OnnxExportError(
        'onnx-chainer cannot convert the Chainer function {}{}: {}'.format(
            function, ' (in Caffe {})'.format(', '.join(where))
            if where else '', error))


def _trace(onnx_chainer: Any, model: chainer.Link,
           forward: Callable[[Any], Any], x: Any, opset: int) -> Any:
    traced = _Traced(model, forward)
    try:
        return onnx_chainer.export(
            traced, x, opset_version=opset, train=False,
            input_names=INPUT_NAME, output_names=OUTPUT_NAME)
    except ValueError as e:
        if 'is not supported' in str(e):
            raise _unsupported(model, e) from e
        raise


def export_onnx(model: chainer.Link, path: PathLike, *,
                input_shape: Sequence[int], opset: int = DEFAULT_OPSET,
                fold_batchnorm: bool = True, overwrite: bool = False,
                batch: Optional[int] = None,
                input_name: Optional[str] = None,
                output_name: Optional[str] = None) -> str:
    """Writes ``model``'s inference-mode forward pass as an ONNX file.

    The model is traced once under ``chainer.using_config('train',
    False)`` (BatchNorm uses its stored statistics, Dropout is off) and
    not changed. The file's batch dimension is free (the symbol ``batch``)
    unless ``batch`` fixes it; its IR version is the lowest the opset
    allows (IR 6 for opset 11), so older runtimes read it too.

    Args:
        model: A :class:`~chainer_finetune.CaffeNet` (called with
            ``inputs={input_name: x}``, returning ``output_name``), or any
            Chain called as ``model(x)`` (a fine-tuning job's
            ``CaffeClassifier``, the AlexNet example's Chain).
        path: The ``.onnx`` file to write.
        input_shape: One example's shape, without the batch:
            ``(3, 224, 224)``.
        opset: ONNX opset, 7 to 11 (onnx-chainer's range).
        fold_batchnorm: Fold BatchNorm and Scale (and other per-channel
            multiply/add constants) right after a convolution into the
            convolution's weights.
        overwrite: Replace an existing file.
        batch: Fix the batch size (None: any batch size).
        input_name: A CaffeNet's input blob (default: its only input).
        output_name: A CaffeNet's output blob (default: the last layer's
            first top).

    Returns:
        The path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        OnnxUnavailableError: onnx or onnx-chainer is not installed.
        OnnxExportError: an opset out of range, a function onnx-chainer
            cannot convert (the message names the Caffe layer), or a graph
            whose batch dimension cannot be freed.
    """
    path = os.fspath(path)
    if not overwrite:
        ensure_absent(path)   # before the work, not only after it
    if opset not in OPSETS:
        raise OnnxExportError('opset {} is outside onnx-chainer 1.6.0\'s '
                              'range {}-{}'.format(opset, OPSETS[0],
                                                   OPSETS[-1]))
    onnx_chainer = import_onnx_chainer()
    from chainer_finetune import onnx_graph

    forward = (_caffe_forward(model, input_name, output_name)
               if isinstance(model, CaffeNet) else model)
    input_shape = tuple(int(d) for d in input_shape)
    trace_batch = batch or _export_batch(model, input_shape)
    x = model.xp.zeros((trace_batch,) + input_shape, dtype=numpy.float32)
    proto = _trace(onnx_chainer, model, forward, x, opset)
    before = sum(onnx_graph.op_counts(proto).values())
    _rewrite(proto, trace_batch if batch is None else None, fold_batchnorm)
    import onnx
    onnx.checker.check_model(proto, full_check=True)
    with atomic_output(path, overwrite) as tmp:
        with open(tmp, 'wb') as f:
            f.write(proto.SerializeToString())
    logger.info('wrote %s: opset %d, IR %d, %d nodes (onnx-chainer wrote '
                '%d): %s', path, opset, proto.ir_version, len(proto.graph.node),
                before, onnx_graph.op_counts(proto))
    return path


def _rewrite(proto: Any, free_batch: Optional[int],
             fold_batchnorm: bool) -> None:
    """The rewrites of :mod:`chainer_finetune.onnx_graph`, in order."""
    from onnx import helper

    from chainer_finetune import onnx_graph
    # Before any shape inference: the declared IR (onnx's newest) would
    # otherwise be checked against the opset.
    proto.ir_version = helper.find_min_ir_version_for(proto.opset_import)
    del proto.graph.value_info[:]
    onnx_graph.constants_to_initializers(proto)
    onnx_graph.fold_constant_reshapes(proto)
    onnx_graph.drop_redundant_expands(proto)
    if fold_batchnorm:
        onnx_graph.fold_batch_norm(proto)
    if free_batch is not None:
        onnx_graph.free_batch_dimension(proto, free_batch)
    onnx_graph.prune_initializers(proto)
