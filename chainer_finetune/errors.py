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


class ModelFetchError(ChainerFinetuneError, OSError):
    """A pretrained model could not be downloaded, extracted or verified."""


class OpenCVUnavailableError(ChainerFinetuneError, ImportError):
    """OpenCV (``cv2`` with ``dnn.readNetFromCaffe``) is not installed."""


class OpenCVComparisonError(ChainerFinetuneError):
    """OpenCV could not read or run the net, or the inputs are unknown."""


class PreprocessingError(ChainerFinetuneError, ValueError):
    """An image or mean that cannot be brought to the network's input."""


class LinkNotFoundError(ChainerFinetuneError, LookupError):
    """A link path or pattern matches no link of the model."""
