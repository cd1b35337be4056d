"""Packaging for chainer_finetune.

Chainer 7.8.1 is built from its sdist, which needs setuptools < 82 in the
build environment; install with the constraints file (see README):

    PIP_CONSTRAINT=constraints/build.txt \\
    PIP_BUILD_CONSTRAINT=constraints/build.txt pip install .
"""

import os

from setuptools import find_packages
from setuptools import setup

here = os.path.dirname(os.path.abspath(__file__))
about = {}
with open(os.path.join(here, 'chainer_finetune', '_version.py')) as f:
    exec(f.read(), about)

with open(os.path.join(here, 'README.md'), encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='chainer_finetune',
    version=about['__version__'],
    description='Fine-tune Caffe Model Zoo models in Chainer on a current '
                'Python, NumPy 2, protobuf and CuPy stack',
    long_description=long_description,
    long_description_content_type='text/markdown',
    license='MIT',
    packages=find_packages(include=['chainer_finetune', 'chainer_finetune.*']),
    package_data={'chainer_finetune.caffe': ['caffe.proto']},
    python_requires='>=3.10',
    install_requires=[
        'chainer==7.8.1',
        'numpy>=1.26',
        'protobuf>=4.21',
        'h5py>=3.8',
        # Decodes the image files of chainer_finetune.data.
        'Pillow>=10',
        # PlotReport and the fine-tuning job's plots (PNG, Agg backend).
        'matplotlib>=3.7',
    ],
    extras_require={
        # CuPy wheels are built per CUDA major; pick the one matching the
        # driver (see docs/gpu.rst). Chainer runs CuPy's own kernels when
        # cuDNN is unavailable (CuPy 14 dropped cuDNN).
        'cuda12': ['cupy-cuda12x>=13.5'],
        'cuda13': ['cupy-cuda13x[ctk]>=14'],
        # The Sphinx documentation (docs/; tox run -e docs).
        'docs': ['sphinx>=7'],
        'test': [
            'hypothesis>=6',
            # The independent reference reader of Caffe models; 5.x dropped
            # cv2.dnn.readNetFromCaffe.
            'opencv-python-headless>=4.8,<5',
            'pytest>=7',
            'tox>=4.12',
        ],
    },
    entry_points={
        'console_scripts': [
            'chainer-finetune = chainer_finetune.cli:main',
        ],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Programming Language :: Python :: 3.10',
        'Programming Language :: Python :: 3.11',
        'Programming Language :: Python :: 3.12',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
