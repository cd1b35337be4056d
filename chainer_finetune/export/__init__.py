"""Models out to other runtimes: Caffe (``.prototxt`` + ``.caffemodel``,
read by Caffe, OpenCV's dnn module and :func:`~chainer_finetune.load_caffe`).

Guide: :doc:`/deploy`.
"""

from chainer_finetune.export.caffe import CaffeFiles  # NOQA
from chainer_finetune.export.caffe import caffe_writer  # NOQA
from chainer_finetune.export.caffe import export_caffe  # NOQA
