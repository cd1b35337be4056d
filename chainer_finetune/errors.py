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


class NoGradientError(ChainerFinetuneError, RuntimeError):
    """A backward pass reached a layer that has no gradient (Caffe's
    ``DetectionOutput``: its box selection is not differentiable)."""


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


class CopyMismatchError(ChainerFinetuneError, ValueError):
    """``copy_model(..., strict=True)`` found values it could not copy.

    Raised before anything is copied; the message lists every mismatch.

    Attributes:
        mismatches (list of CopyEntry): The entries that are mismatches.
        unused_mapping_keys (list of str): Mapping keys that named no
            source link.
        report (CopyReport): What a non-strict copy would have done.
    """

    def __init__(self, message: str, report) -> None:
        super().__init__(message)
        self.report = report
        self.mismatches = report.mismatches
        self.unused_mapping_keys = report.unused_mapping_keys


class OptimizerNotSetUpError(ChainerFinetuneError, RuntimeError):
    """A parameter has no update rule: ``optimizer.setup(model)`` not run."""


class UnsupportedOptimizerError(ChainerFinetuneError, TypeError):
    """The optimizer has no learning rate that a multiplier could scale."""


class HeadError(ChainerFinetuneError, ValueError):
    """A link that cannot be replaced by a fresh classifier."""


class DataError(ChainerFinetuneError, ValueError):
    """Labelled image data that cannot be found, read or split as asked.

    The message names the file (and line, for a list file) or the class
    involved, and what was expected.
    """


class FinetuneError(ChainerFinetuneError, ValueError):
    """A fine-tuning configuration that cannot run (the message says why)."""


class InputShapeError(ChainerFinetuneError, ValueError):
    """Input shapes a net cannot be run on: a negative dimension, more
    values than are fed at most, or a layer that rejects what reaches it.

    The message names the input or the layer and the shapes involved.
    """


class PredictError(ChainerFinetuneError, ValueError):
    """A fine-tuned model that cannot be loaded for prediction, or a
    prediction that cannot be made as asked.

    The message names the file: a ``model.json`` that is missing, not
    valid JSON or not in the expected form, weights that do not match the
    classifier it describes, or a source model that changed since the run.
    """


class ExportError(ChainerFinetuneError, ValueError):
    """A model that cannot be written in the format asked.

    The message names the function or layer and its place in the net (for a
    traced Chain: the node's index in the graph and the named layers around
    it), and what the format would need.
    """


class OnnxUnavailableError(ChainerFinetuneError, ImportError):
    """onnx or onnx-chainer, which ONNX export needs, is not installed
    (``pip install 'chainer_finetune[onnx]'`` and
    ``pip install --no-deps onnx-chainer==1.6.0``)."""


class OnnxExportError(ChainerFinetuneError, ValueError):
    """A model that cannot be written as ONNX as asked; the message names
    the Chainer function, layer or graph node involved."""
