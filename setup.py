"""Packaging for chainer_finetune.

Chainer 7.8.1 is built from its sdist, which needs setuptools < 82 in the
build environment; install with the constraints file (see README):

    PIP_CONSTRAINT=constraints/build.txt \\
    PIP_BUILD_CONSTRAINT=constraints/build.txt pip install .
"""

import os

from setuptools import find_packages
from setuptools import setup
from setuptools.command.build_py import build_py

# The .pth file that lets `import chainer` come first (docs/compat.rst):
# site runs its `import` line at start-up, which only installs a finder.
HOOK_PTH = 'chainer_finetune-import-hook.pth'
HOOK_PTH_LINE = ('import _chainer_finetune_hook; '
                 '_chainer_finetune_hook.install()\n')


class BuildPyWithHook(build_py):
    """build_py that also puts :data:`HOOK_PTH` at the root of the wheel.

    A .pth file only runs from site-packages itself, which no package_data
    or data_files entry reaches. A regular wheel holds what build_lib
    holds; an editable wheel (setuptools >= 64) ignores build_lib and is
    assembled in the directory that its ``install`` command has as
    ``install_lib``, so in editable mode the file is written there.
    """

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            root = self.get_finalized_command('install').install_lib
        else:
            root = self.build_lib
        self.mkpath(root)
        with open(os.path.join(root, HOOK_PTH), 'w', encoding='utf-8') as f:
            f.write(HOOK_PTH_LINE)

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, 'editable_mode', False):
            outputs.append(os.path.join(self.build_lib, HOOK_PTH))
        return outputs


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
    # Imported at start-up by HOOK_PTH; outside the package, whose
    # __init__ imports Chainer.
    py_modules=['_chainer_finetune_hook'],
    cmdclass={'build_py': BuildPyWithHook},
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
        # Data-parallel fine-tuning with ChainerMN (docs/distributed.rst):
        # mpi4py and MPICH as wheels, `mpiexec` in the environment's bin/.
        'mpi': ['mpi4py>=4', 'mpich>=4'],
        # The Sphinx documentation (docs/; tox run -e docs).
        # furo: a maintained theme whose content column scrolls wide code
        # blocks instead of cutting them off.
        'docs': ['sphinx>=7,<10', 'furo==2025.12.19',
                 'sphinx-copybutton==0.5.2'],
        # ONNX export (docs/deploy.rst). onnx-chainer itself cannot be listed:
        # its metadata pins chainer<7 and onnx<1.7, so it is installed with
        # `pip install --no-deps onnx-chainer==1.6.0` (tox.ini, dev.py).
        # onnx >= 1.17: the oldest tested (NumPy 1.26 / protobuf 4 env);
        # onnxruntime runs the exported files in the tests.
        'onnx': ['onnx>=1.17', 'onnxruntime>=1.17'],
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
