"""Replacing a pretrained network's classifier with a fresh one.

:func:`replace_head` swaps the last classifier (fc8, ``loss3/classifier``,
SqueezeNet's 1x1 ``conv10``) for a freshly initialised layer with as many
outputs as the new task has classes, under the old one's name and place;
see ``docs/training.rst``.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import chainer
import chainer.links as L
import numpy

from chainer_finetune.caffe.net import CaffeNet
from chainer_finetune.caffe.layers import output_param
from chainer_finetune.errors import HeadError
from chainer_finetune.lr_mult import MultipliedHyperparameter
from chainer_finetune.paths import match_links

logger = logging.getLogger(__name__)

#: Standard deviation of the default initial weights. Caffe's fine-tuning
#: recipes (flickr_style's ``fc8_flickr``, SqueezeNet's ``conv10``) use
#: ``weight_filler { type: "gaussian" std: 0.01 }``.
DEFAULT_STD = 0.01


def _parent_and_name(model: chainer.Link, path: str):
    parent = model
    *heads, last = path.split('/')
    for part in heads:
        parent = parent[int(part)] if isinstance(parent, chainer.ChainList) \
            else getattr(parent, part)
    return parent, last


def _set_child(parent: chainer.Link, name: str, link: chainer.Link) -> None:
    if isinstance(parent, chainer.ChainList):
        # Sequential's __setitem__ also updates its list of layers.
        parent[int(name)] = link
        return
    delattr(parent, name)
    with parent.init_scope():
        setattr(parent, name, link)


def _initializers(initialW: Any, initial_bias: Any, seed: Optional[int]):
    if initialW is not None and seed is not None:
        raise ValueError('seed seeds the default initializer; give initialW '
                         'its own rng instead')
    if initialW is None:
        rng = None if seed is None else numpy.random.RandomState(seed)
        initialW = chainer.initializers.Normal(DEFAULT_STD, rng=rng)
    return initialW, 0 if initial_bias is None else initial_bias


def _check_head(old: chainer.Link, where: str) -> None:
    if isinstance(old, L.Linear):
        return
    if isinstance(old, L.Convolution2D):
        ksize = old.W.shape[2:] if old.W.array is not None else old.ksize
        if not hasattr(ksize, '__len__'):
            ksize = (ksize, ksize)
        if tuple(ksize) != (1, 1) or old.groups != 1:
            raise HeadError(
                '{}: a Convolution2D head must be 1x1 without groups, this '
                'one has ksize {} and groups {}'.format(
                    where, old.ksize, old.groups))
        return
    raise HeadError('{} is a {}, not a Linear or a 1x1 Convolution2D'.format(
        where, type(old).__name__))


def _new_link(old: chainer.Link, n_out: int, initialW: Any,
              initial_bias: Any) -> chainer.Link:
    nobias = old.b is None
    # The input size comes from the old weights (None: still lazy).
    n_in = old.W.shape[1] if old.W.array is not None else None
    if isinstance(old, L.Linear):
        return L.Linear(n_in, n_out, nobias=nobias, initialW=initialW,
                        initial_bias=initial_bias)
    return L.Convolution2D(n_in, n_out, 1, stride=old.stride, pad=old.pad,
                           nobias=nobias, initialW=initialW,
                           initial_bias=initial_bias)


def _update_description(net: CaffeNet, caffe_name: str,
                        link: chainer.Link, n_out: int) -> None:
    # The stored layer description must match the new link, or exporting
    # the net (save_weights, the layer checks) would see a 1000-way layer
    # with 10 rows of weights.
    layer = next((layer for layer in net.caffe_layers
                  if layer.name == caffe_name), None)
    param = None if layer is None else output_param(layer)
    if param is not None:
        param.num_output = n_out
        param.bias_term = getattr(link, 'b', None) is not None
        net.update_caffe_layer(layer)


def _give_update_rules(old: chainer.Link, new: chainer.Link,
                       optimizer: Optional[chainer.Optimizer],
                       where: str) -> None:
    old_rules = {name: p.update_rule for name, p in old.namedparams()}
    if optimizer is None:
        if any(rule is not None for rule in old_rules.values()):
            logger.warning(
                '%s: the replaced link had update rules (an optimizer was '
                'set up); the new one has none and will not train until '
                'optimizer.setup(model) runs again, or pass optimizer= to '
                'replace_head', where)
        return
    for name, param in new.namedparams():
        rule = optimizer.create_update_rule()
        if getattr(optimizer, '_use_fp32_update', False):
            rule.use_fp32_update()
        old_rule = old_rules.get(name)
        old_hp = None if old_rule is None else old_rule.hyperparam
        if isinstance(old_hp, MultipliedHyperparameter):
            # The layer keeps its multipliers (lr_mult 10 for a new fc8).
            rule.hyperparam = MultipliedHyperparameter(
                rule.hyperparam, old_hp.lr_name, old_hp.lr_mult,
                old_hp.decay_mult)
        param.update_rule = rule


def replace_head(net: chainer.Link, layer_name: str, n_out: int,
                 initialW: Any = None, *, initial_bias: Any = None,
                 seed: Optional[int] = None,
                 optimizer: Optional[chainer.Optimizer] = None
                 ) -> chainer.Link:
    """Replaces a classifier layer with a fresh one with ``n_out`` outputs.

    The layer may be an :class:`~chainer.links.Linear` (a Caffe
    InnerProduct) or a 1x1 :class:`~chainer.links.Convolution2D` without
    groups. The new link has the same input size (taken from the old
    weights), stride and padding, a bias if the old one had one, the old
    link's dtype and device, and the same name and place in the model. On a
    :class:`~chainer_finetune.CaffeNet` the layer's description is updated
    too (``num_output``), so the net can still be exported.

    Weights are drawn from a Gaussian with standard deviation
    :data:`DEFAULT_STD` (0.01, Caffe's filler in its fine-tuning recipes)
    and biases start at 0, unless ``initialW`` / ``initial_bias`` are
    given.

    Call it before ``optimizer.setup(model)``; when the optimizer is
    already set up, pass it as ``optimizer`` so the new parameters get
    update rules (and the multipliers of the parameters they replace, see
    :func:`~chainer_finetune.lr_mult.set_lr_mult`).

    Args:
        net (~chainer.Link): The model (a CaffeNet or any Chain).
        layer_name (str): The layer: a Caffe layer name on a CaffeNet, or a
            link path or pattern that names exactly one link (``fc8``,
            ``classifier/fc``).
        n_out (int): Number of outputs (classes).
        initialW: Initializer of the weights (a Chainer initializer, array
            or scalar).
        initial_bias: Initializer of the bias.
        seed (int): Seed of the default weight initializer (the result is
            then the same on every run); not allowed with ``initialW``.
        optimizer (~chainer.Optimizer): An optimizer already set up with
            ``net``, to give the new parameters update rules.

    Returns:
        ~chainer.Link: The new link.

    Raises:
        LinkNotFoundError: ``layer_name`` names no link.
        HeadError: it names several, or a link of another kind.
    """
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
        raise ValueError('n_out must be a positive int, got {!r}'.format(
            n_out))
    matches = match_links(net, layer_name)
    if len(matches) != 1:
        raise HeadError('{!r} names {} links ({}); name exactly one'.format(
            layer_name, len(matches), ', '.join(p for p, _ in matches)))
    path, old = matches[0]
    where = 'layer {!r}'.format(layer_name) if layer_name == path \
        else 'layer {!r} ({})'.format(layer_name, path)
    _check_head(old, where)
    initialW, initial_bias = _initializers(initialW, initial_bias, seed)
    # Built on the CPU (a seeded initializer draws with NumPy), in the old
    # weights' dtype, then moved to the old link's device.
    dtype = old.W.dtype if old.W.array is not None else chainer.config.dtype
    with chainer.using_config('dtype', dtype):
        new = _new_link(old, n_out, initialW, initial_bias)
    new.to_device(old.device)
    parent, name = _parent_and_name(net, path)
    _give_update_rules(old, new, optimizer, where)
    _set_child(parent, name, new)
    if isinstance(parent, CaffeNet) and name in parent.caffe_names:
        _update_description(parent, parent.caffe_names[name], new, n_out)
    logger.info('%s: replaced %s (%s outputs) with a fresh %s (%d inputs, '
                '%d outputs)', where, type(old).__name__,
                old.W.shape[0] if old.W.array is not None else '?',
                type(new).__name__,
                new.W.shape[1] if new.W.array is not None else -1, n_out)
    return new
