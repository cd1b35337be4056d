"""Exceptions raised by chainer_finetune."""


class ChainerFinetuneError(Exception):
    """Base class of the errors this library raises on bad input."""


class CaffeModelError(ChainerFinetuneError, ValueError):
    """A Caffe model file (caffemodel, prototxt, binaryproto) cannot be used.

    The message names the file, the layer where one is involved, and what
    was expected.
    """


class UnsupportedLayerError(CaffeModelError):
    """A Caffe layer type that the loader cannot convert faithfully."""
