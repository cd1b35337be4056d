"""Data-parallel training across processes and machines with ChainerMN.

ChainerMN ships inside the chainer 7.8.1 distribution (``import chainermn``)
and runs over MPI (``pip install chainer_finetune[mpi]``: mpi4py and an
MPI). :func:`create_distributed` makes a communicator when the process was
started by ``mpiexec -n N`` (N > 1) or when one is asked for by name;
:func:`distribute_recipe` turns a single-process recipe (model,
optimizer, data) into the distributed one (:func:`distribute` does the
optimizer's part alone). Guide: :doc:`/distributed`.

What a distributed run computes is what one process computes with the same
global batch (see :class:`GlobalBatchSlice`): every rank follows the one
seeded order over the whole training set and takes its slice of every
global batch, each example randomly cropped with a seed drawn for its
place in that order; the optimizer averages the gradients over the ranks
(``chainermn.create_multi_node_optimizer``); the model is broadcast from
rank 0 before the first step; trainable BatchNormalization links, a Caffe
net's BatchNorm layers included, normalize with the statistics of the
whole global batch (``chainermn.links.MultiNodeBatchNormalization``)
unless per-rank statistics are asked for; the held-out set is split into
disjoint shards (``chainermn.scatter_index``) and :class:`ShardEvaluator`
adds up the examples of all of them.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import socket
import sys
import time
import warnings
from typing import (Any, Callable, Dict, List, NamedTuple, Optional, Tuple,
                    TypeVar)

import chainer
from chainer.functions.normalization import batch_normalization as \
    batch_normalization_function
from chainer.training import extensions
import chainer.links as L
# Part of the chainer distribution; mpi4py is imported only when a
# communicator is created (_import_chainermn).
import chainermn
from chainermn.functions import batch_normalization as multi_node_bn
import numpy

from chainer_finetune.errors import FinetuneError
from chainer_finetune.freeze import freeze
from chainer_finetune.freeze import frozen_paths
from chainer_finetune.paths import join_path
from chainer_finetune.paths import link_paths

logger = logging.getLogger(__name__)

T = TypeVar('T')

#: Communicators of ChainerMN 7.8.1: ``naive`` runs on CPU; the others need
#: CuPy (``pure_nccl``, ``flat``: NCCL; ``non_cuda_aware``: NCCL between
#: the GPUs of a node, MPI between nodes).
COMMUNICATORS = ('naive', 'pure_nccl', 'flat', 'non_cuda_aware')

#: Seconds a failing process of an MPI job waits, after writing its error,
#: before it ends the job (MPI_Abort), so that the launcher forwards it.
ABORT_GRACE_SECONDS = 1.0

#: The environment variables an MPI launcher sets to the number of
#: processes (MPICH/Hydra and Intel MPI, PMIx, Open MPI, MVAPICH2).
MPI_SIZE_VARIABLES = ('PMI_SIZE', 'PMIX_SIZE', 'OMPI_COMM_WORLD_SIZE',
                      'MV2_COMM_WORLD_SIZE')
#: The same launchers' variables for this process's rank.
MPI_RANK_VARIABLES = ('PMI_RANK', 'PMIX_RANK', 'OMPI_COMM_WORLD_RANK',
                      'MV2_COMM_WORLD_RANK')


def _first_number(names: Tuple[str, ...], default: int,
                  environ: Optional[Dict[str, str]]) -> int:
    environ = os.environ if environ is None else environ
    for name in names:
        value = environ.get(name, '')
        if value.isdigit():
            return int(value)
    return default


def launched_size(environ: Optional[Dict[str, str]] = None) -> int:
    """How many processes the MPI launcher started (1 outside one)."""
    return _first_number(MPI_SIZE_VARIABLES, 1, environ)


def launched_rank(environ: Optional[Dict[str, str]] = None) -> int:
    """This process's rank as the MPI launcher set it (0 outside one)."""
    return _first_number(MPI_RANK_VARIABLES, 0, environ)


def abort_job(code: int) -> None:
    """Ends every process of the MPI job (``MPI_Abort``) when this process
    is one of several; returns otherwise.

    A process that stops on an error while the others wait for it in a
    collective operation would leave them waiting for ever; the launcher
    ends them all on an abort.
    """
    mpi = sys.modules.get('mpi4py.MPI')
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return
    if mpi.COMM_WORLD.Get_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        # The launcher ends every process at once, its own output proxies
        # included: what they have not read yet is lost (seen under load:
        # a job whose every rank printed its error line showed none). A
        # moment lets them forward this process's last lines first.
        time.sleep(ABORT_GRACE_SECONDS)
        mpi.COMM_WORLD.Abort(code)


def device_for(spec: str, communicator: str, intra_rank: int,
               intra_size: int) -> str:
    """The device of the process of rank ``intra_rank`` among the
    ``intra_size`` processes of its machine: ``spec`` with ``{intra_rank}``
    replaced (``'@cupy:{intra_rank}'``: one GPU per process).

    Args:
        spec: A Chainer device string, possibly with ``{intra_rank}``.
        communicator: The communicator's name (:data:`COMMUNICATORS`).
        intra_rank: The process's rank on its machine.
        intra_size: The number of processes on its machine.

    Raises:
        FinetuneError: a GPU communicator with a CPU device, or several
            processes of a machine given the same GPU.
    """
    try:
        device = str(spec).format(intra_rank=intra_rank)
    except (KeyError, IndexError, ValueError) as e:
        raise FinetuneError('device {!r}: the only field it may hold is '
                            '{{intra_rank}} ({!r})'.format(spec, e)) from e
    on_gpu = device.startswith('@cupy') or device.lstrip('-').isdigit() \
        and int(device) >= 0
    if communicator != 'naive' and not on_gpu:
        raise FinetuneError(
            'the {} communicator needs a GPU per process; the device is '
            '{!r} (use --device @cupy:{{intra_rank}})'.format(
                communicator, device))
    if on_gpu and device == str(spec) and intra_size > 1:
        raise FinetuneError(
            'device {!r}: {} processes on this machine would share one '
            'GPU; use @cupy:{{intra_rank}}'.format(device, intra_size))
    return device


@dataclasses.dataclass
class Distributed:
    """A ChainerMN communicator and what follows from it.

    Attributes:
        comm: The ChainerMN communicator.
        name: Its name (one of :data:`COMMUNICATORS`).
    """

    comm: Any
    name: str

    @property
    def rank(self) -> int:
        """This process's rank (0: the one that writes outputs)."""
        return self.comm.rank

    @property
    def size(self) -> int:
        """Number of processes."""
        return self.comm.size

    @property
    def intra_rank(self) -> int:
        """This process's rank among those on its machine (its GPU)."""
        return self.comm.intra_rank

    @property
    def is_root(self) -> bool:
        """Rank 0: the process that writes logs, plots and snapshots."""
        return self.comm.rank == 0

    def device(self, spec: str) -> str:
        """``spec`` with ``{intra_rank}`` replaced by this process's rank on
        its machine (:func:`device_for`)."""
        return device_for(spec, self.name, self.intra_rank,
                          self.comm.intra_size)

    def ranks_line(self) -> str:
        """Every rank's host and process id, gathered to all ranks: the
        line that maps an MPI launcher's "PID n" to a rank."""
        mine = '{}={}@{}'.format(self.rank, os.getpid(), socket.gethostname())
        return ' '.join(self.comm.bcast_obj(self.comm.gather_obj(mine)))


def root_first(dist: Optional[Distributed], make: Callable[[], T]) -> T:
    """``make()`` on rank 0, then on the other ranks: what it caches on a
    shared disk (a fetched model, a converted net) is written once."""
    if dist is None:
        return make()
    result = make() if dist.is_root else None
    dist.comm.mpi_comm.Barrier()
    return result if dist.is_root else make()


def _import_chainermn() -> Any:
    try:
        import mpi4py  # noqa: F401  (chainermn imports it lazily)
    except ImportError as e:
        raise FinetuneError(
            'distributed training needs mpi4py and an MPI: pip install '
            '"chainer_finetune[mpi]" ({})'.format(e)) from e



def create_distributed(communicator: Optional[str] = None,
                       environ: Optional[Dict[str, str]] = None
                       ) -> Optional[Distributed]:
    """The communicator of a distributed run, or None for one process.

    Args:
        communicator: One of :data:`COMMUNICATORS`; ``'none'`` forces a
            single-process run; None picks ``naive`` when an MPI launcher
            started more than one process (:func:`launched_size`), else
            runs in one process.
        environ: The environment to look at (default ``os.environ``).

    Raises:
        FinetuneError: an unknown communicator, or mpi4py missing.
    """
    if communicator == 'none':
        return None
    if communicator is None:
        if launched_size(environ) <= 1:
            return None
        communicator = 'naive'
    if communicator not in COMMUNICATORS:
        raise FinetuneError('unknown communicator {!r}; expected one of {} '
                            "or 'none'".format(communicator,
                                               ', '.join(COMMUNICATORS)))
    _import_chainermn()
    # An exception that reaches the top of any process aborts the whole
    # job instead of leaving the others waiting in a collective. (Added
    # once; a second communicator in a process would only warn.)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'chainermn.global_except_hook',
                                UserWarning)
        chainermn.global_except_hook.add_hook()
    try:
        comm = chainermn.create_communicator(communicator)
    except (ImportError, RuntimeError, ValueError) as e:
        raise FinetuneError('cannot create the {} communicator: {}'.format(
            communicator, e)) from e
    return Distributed(comm, communicator)


def per_rank_batch(global_batch: int, size: int) -> int:
    """The batch of each of ``size`` processes for ``global_batch``.

    Raises:
        FinetuneError: ``size`` does not divide ``global_batch``.
    """
    if global_batch % size:
        raise FinetuneError(
            'the global batch size {} cannot be split over {} processes; '
            'choose a multiple of {}'.format(global_batch, size, size))
    return global_batch // size


def _serialize_random_state(serializer: Any, prefix: str,
                            rng: numpy.random.RandomState) -> None:
    """Saves or restores ``rng``'s state under ``PREFIX_keys`` and
    ``PREFIX_rest``."""
    name, keys, pos, has_gauss, gauss = rng.get_state()
    keys = serializer(prefix + '_keys', keys)
    pos, has_gauss, gauss = serializer(
        prefix + '_rest', numpy.array([pos, has_gauss, gauss], numpy.float64))
    rng.set_state((name, numpy.asarray(keys, numpy.uint32), int(pos),
                   int(has_gauss), float(gauss)))


class GlobalBatchSlice(chainer.dataset.Iterator):
    """Rank ``rank``'s slice of every global batch of one order.

    Every rank runs the same index iterator over the whole dataset (a
    SerialIterator with the global batch size and, for training, a
    ShuffleOrderSampler seeded with ``seed``: the order a single-process
    run with that seed and batch follows, epoch boundaries included) and
    loads only the examples of its slice ``[rank * b, (rank + 1) * b)``.

    Random augmentation is a function of the example's place in that one
    stream: a generator of its own (seeded from ``seed``) draws a seed for
    every example of every *global* batch, on every rank alike, and a
    dataset with an ``example(i, seed)`` method (a
    :class:`~chainer_finetune.data.AugmentedDataset`) loads the example
    with it; so one process and N crop each example alike. Other datasets
    are read as ``dataset[i]``.

    Its epoch counters and serialized state (the index iterator's and both
    random generators') are the same on every rank: rank 0's snapshot
    resumes every rank, and a resumed run shuffles and crops its later
    batches as an uninterrupted one does. With ``size`` 1 it is the
    single-process iterator that a checkpointed run can resume exactly.

    Args:
        dataset: The whole dataset (every rank can read it).
        global_batch: The global batch size (a multiple of ``size``).
        rank: This process's rank.
        size: Number of processes.
        seed: Seed of the shuffled order and of the examples' seeds.
    """

    def __init__(self, dataset: Any, global_batch: int, rank: int,
                 size: int, seed: int) -> None:
        self.dataset = dataset
        self.batch = per_rank_batch(global_batch, size)
        self.rank = rank
        self.rng = numpy.random.RandomState(seed)
        # A stream of its own (init_by_array of [seed, 1]): drawing the
        # examples' seeds leaves the order what make_iterator's would be.
        self.example_rng = numpy.random.RandomState([seed, 1])
        self._load = getattr(dataset, 'example', None)
        sampler = chainer.iterators.ShuffleOrderSampler(self.rng)
        self.indices = chainer.iterators.SerialIterator(
            numpy.arange(len(dataset)), global_batch, repeat=True,
            order_sampler=sampler)

    def __next__(self) -> List[Any]:
        batch = next(self.indices)
        # One seed per example of the whole global batch, drawn alike on
        # every rank whatever its slice.
        seeds = self.example_rng.randint(0, 2 ** 31, size=len(batch))
        part = slice(self.rank * self.batch, (self.rank + 1) * self.batch)
        if self._load is None:
            return [self.dataset[int(i)] for i in batch[part]]
        return [self._load(int(i), int(s))
                for i, s in zip(batch[part], seeds[part])]

    next = __next__

    @property
    def epoch(self) -> int:
        return self.indices.epoch

    @property
    def epoch_detail(self) -> float:
        return self.indices.epoch_detail

    @property
    def previous_epoch_detail(self) -> Optional[float]:
        return self.indices.previous_epoch_detail

    @property
    def is_new_epoch(self) -> bool:
        return self.indices.is_new_epoch

    @property
    def repeat(self) -> bool:
        return True

    def reset(self) -> None:
        self.indices.reset()

    def serialize(self, serializer: Any) -> None:
        self.indices.serialize(serializer)
        # The generators of the next epochs' orders and of the examples'
        # seeds: without them a resumed run would shuffle its later epochs,
        # and crop its examples, otherwise.
        _serialize_random_state(serializer, 'rng', self.rng)
        _serialize_random_state(serializer, 'example_rng', self.example_rng)


def held_out_shard(dataset: Any, dist: Distributed) -> Any:
    """This rank's disjoint shard of ``dataset`` (every example in exactly
    one shard; sizes differ by at most one), by ``chainermn.scatter_index``
    (only the bounds travel: every rank can read the dataset)."""
    _import_chainermn()
    begin, end = chainermn.datasets.scatter_index(
        len(dataset), dist.comm, force_equal_length=False)
    return chainer.datasets.SubDataset(dataset, begin, end)


class ShardEvaluator(extensions.Evaluator):
    """An Evaluator whose numbers are means over all examples of the
    held-out set, however it is split into batches and shards.

    Chainer's Evaluator averages the per-batch means (a short last batch
    counts as much as a full one) and ChainerMN's multi-node evaluator
    then averages the per-rank means (shards of unequal size count alike);
    here every reported value is weighted by its batch's size and the sums
    and counts are added up over the ranks (``gather_obj``, then
    ``bcast_obj``), so N processes report what one does.

    Args:
        iterator: The held-out iterator (a single ordered pass).
        target: The model (an ``L.Classifier``).
        device: Where batches go.
        comm: The ChainerMN communicator, or None in one process.
    """

    def __init__(self, iterator: Any, target: chainer.Link, device: Any,
                 comm: Any = None) -> None:
        super().__init__(iterator, target, device=device)
        self.comm = comm

    def evaluate(self) -> Dict[str, float]:
        iterator = self.get_iterator('main')
        target = self.get_target('main')
        if hasattr(iterator, 'reset'):
            iterator.reset()
        sums: Dict[str, Tuple[float, int]] = {}
        for batch in iterator:
            observation: Dict[str, Any] = {}
            with chainer.reporter.report_scope(observation):
                arrays = self.converter(batch, self.device)
                with chainer.function.no_backprop_mode(), \
                        chainer.using_config('train', False):
                    target(*arrays)
            for key, value in observation.items():
                total, count = sums.get(key, (0.0, 0))
                value = float(chainer.backend.CpuDevice().send(
                    getattr(value, 'array', value)))
                sums[key] = (total + value * len(batch), count + len(batch))
        if self.comm is not None:
            gathered = self.comm.bcast_obj(self.comm.gather_obj(sums))
            sums = {}
            for part in gathered:
                for key, (total, count) in sorted(part.items()):
                    old = sums.get(key, (0.0, 0))
                    sums[key] = (old[0] + total, old[1] + count)
        return {key: total / count for key, (total, count) in sums.items()
                if count}


class _TwoPassStatistics(
        batch_normalization_function.GeneralBatchNormalizationImpl):
    """ChainerMN's multi-node batch statistics (``impl``: what its selector
    picks for the communicator, MPI or NCCL), with the variance taken from
    the deviations from the global mean, as one process takes it.

    ChainerMN all-reduces E[x] and E[x^2] once and takes E[x^2] - E[x]^2,
    which loses float32 digits where the mean is large against the spread
    (the first layers of a net from scratch, a channel that is almost
    constant). Here the global mean is all-reduced first, then the mean of
    the squared deviations from it: two all-reduces of 2C values instead
    of one. The backward pass is ChainerMN's.
    """

    def __init__(self, impl: Any) -> None:
        self.impl = impl

    def get_mean_and_var(self, axis: Tuple[int, ...], gamma: Any, x: Any,
                         xp: Any, interm_dtype: Any) -> Tuple[Any, Any]:
        mean, _ = self.impl.get_mean_and_var(axis, gamma, x, xp,
                                             interm_dtype)
        shape = [1 if i in axis else n for i, n in enumerate(x.shape)]
        deviations = x - mean.reshape(shape).astype(x.dtype, copy=False)
        # E[d] is the rounding of the first pass; E[d^2] - E[d]^2 is the
        # variance computed from the deviations.
        _, var = self.impl.get_mean_and_var(axis, gamma, deviations, xp,
                                            interm_dtype)
        return mean, var

    def get_ggamma_and_gbeta(self, axis: Tuple[int, ...], gamma: Any,
                             gy: Any, x_hat: Any, xp: Any) -> Tuple[Any, Any]:
        return self.impl.get_ggamma_and_gbeta(axis, gamma, gy, x_hat, xp)


class GlobalBatchNormalization(chainermn.links.MultiNodeBatchNormalization):
    """ChainerMN's MultiNodeBatchNormalization computing what one process
    computes with the whole global batch, called as Chainer's own links are.

    In training it normalizes with the mean and variance of the whole
    global batch, as ChainerMN's does, with two differences:

    * the variance is the mean of the squared deviations from the global
      mean (two all-reduces per layer and step), not E[x^2] - E[x]^2
      (one): on the first batch of the README's demo net from scratch,
      against a float64 reference, the variances came out up to 3.7e-5
      off that way, and up to 8.9e-6 off as NumPy computes them in one
      process, from the deviations;
    * the running variance's unbiased correction m / (m - 1) counts the
      examples of the whole global batch, not of one process (ChainerMN's
      came out 1.25 times what one process keeps with 2 processes of 3).

    ChainerMN's class defines ``__call__``; this one computes in
    ``forward`` behind ``chainer.Link.__call__``, as
    ``L.BatchNormalization`` does, so that
    :func:`~chainer_finetune.freeze` can hold it (stored statistics, no
    update, no all-reduce) like any other link.
    """

    __call__ = chainer.Link.__call__

    def forward(self, x: Any, finetune: bool = False) -> Any:
        """Normalizes ``x`` (see ``MultiNodeBatchNormalization``)."""
        if not chainer.config.train or finetune:
            return chainermn.links.MultiNodeBatchNormalization.__call__(
                self, x, finetune)
        xp = self.device.xp
        with chainer.using_device(self.device):
            # Caffe's BatchNorm has neither: ones and zeros, as ChainerMN's.
            gamma = self.gamma if hasattr(self, 'gamma') else \
                chainer.Variable(xp.ones(self.avg_mean.shape,
                                         self.avg_mean.dtype))
            beta = self.beta if hasattr(self, 'beta') else \
                chainer.Variable(xp.zeros(self.avg_mean.shape,
                                          self.avg_mean.dtype))
        selector = multi_node_bn.MultiNodeBNImplSelector(
            self.comm, self._communication_backend)
        func = batch_normalization_function.BatchNormalization(
            self.eps, self.avg_mean, self.avg_var, self.decay,
            impl_selector=lambda f, inputs: _TwoPassStatistics(
                selector(f, inputs)))
        before = self.avg_var.copy()
        y, = func.apply((x, gamma, beta))
        self.avg_mean[...] = func.running_mean
        # Chainer's update corrected the batch variance by m / (m - 1) with
        # m this process's values per channel; the global batch's count is
        # N times that.
        local = x.size // self.avg_mean.size
        total = local * self.comm.size
        ratio = (total / max(total - 1.0, 1.0)) / (local / max(local - 1.0,
                                                               1.0))
        kept = self.decay * before
        self.avg_var[...] = kept + (func.running_var - kept) * ratio
        return y


def _global_batch_norm(link: L.BatchNormalization, comm: Any,
                       where: str) -> GlobalBatchNormalization:
    """A :class:`GlobalBatchNormalization` with ``link``'s parameters,
    statistics, settings and Caffe factor."""
    if link.avg_mean is None:
        raise FinetuneError(
            '{}: a BatchNormalization that has not seen an input yet; run a '
            'forward pass first'.format(where))
    with warnings.catch_warnings():
        # Its "experimental" FutureWarning, printed by every rank.
        warnings.simplefilter('ignore', FutureWarning)
        mnbn = GlobalBatchNormalization(
            link.avg_mean.shape, comm, decay=link.decay, eps=link.eps,
            dtype=link.avg_mean.dtype,
            use_gamma=getattr(link, 'gamma', None) is not None,
            use_beta=getattr(link, 'beta', None) is not None)
    for param in ('gamma', 'beta'):
        if getattr(link, param, None) is not None:
            getattr(mnbn, param).array[...] = getattr(link, param).array
    mnbn.avg_mean[...] = link.avg_mean
    mnbn.avg_var[...] = link.avg_var
    mnbn.N = link.N
    if hasattr(link, 'caffe_factor'):
        # A Caffe BatchNorm layer's scale factor (its layer function sets
        # the decay from it every step): saved under the same name.
        mnbn.add_persistent('caffe_factor', link.caffe_factor)
    mnbn.to_device(link.device)
    if not link.update_enabled:
        mnbn.disable_update()
    return mnbn


def use_multi_node_batchnorm(model: chainer.Link, comm: Any) -> List[str]:
    """Replaces, in place, every ``L.BatchNormalization`` of ``model`` (the
    BatchNorm layers of a :class:`~chainer_finetune.CaffeNet` included) by
    a :class:`GlobalBatchNormalization` (ChainerMN's
    MultiNodeBatchNormalization) under the same name, with the same
    parameters, statistics (Caffe's ``caffe_factor`` too), decay, eps and
    update setting: in training it normalizes with the mean and variance
    of the whole global batch (one all-reduce per layer and step), as a
    single process would, and what it saves has the same keys.

    A link that :func:`~chainer_finetune.freeze` holds is held again after
    the swap: it keeps normalizing with its stored statistics, without an
    all-reduce. A CaffeNet BatchNorm layer with ``use_global_stats`` never
    calls its link in training. Call it after the first forward pass (a
    lazily sized link has no statistics before) and before
    ``optimizer.setup``.

    Returns:
        The paths of the replaced links.

    Raises:
        FinetuneError: a BatchNormalization that has not seen an input.
    """
    held = set(frozen_paths(model))
    replaced = []
    for path, parent in link_paths(model, include_root=True):
        if not isinstance(parent, chainer.Chain):
            continue
        for link in list(parent.children()):
            if type(link) is not L.BatchNormalization:
                continue
            name = link.name
            where = join_path(path, name)
            mnbn = _global_batch_norm(link, comm, where)
            # Replaced in the parent's registry of children too, so that
            # namedparams() and serializers see the new link.
            delattr(parent, name)
            with parent.init_scope():
                setattr(parent, name, mnbn)
            if where in held:
                freeze(model, '/' + where)
            replaced.append(where)
    return replaced


def distribute(dist: Distributed, model: chainer.Link,
               optimizer: chainer.Optimizer) -> chainer.Optimizer:
    """Makes an optimizer that has been set up on ``model`` a multi-node
    one and gives every rank rank 0's values; returns the optimizer to
    use from now on.

    ``chainermn.create_multi_node_optimizer``'s first ``update()`` only
    broadcasts rank 0's parameters and applies no gradient: without the
    explicit broadcast here (``comm.bcast_data``), after which the wrapper
    is told that nothing has changed, the first batch of every run would
    be thrown away.
    """
    _import_chainermn()
    multi = chainermn.create_multi_node_optimizer(optimizer, dist.comm)
    dist.comm.bcast_data(model)
    # Records the parameter set, so that the first update() averages
    # gradients and steps instead of broadcasting again.
    multi.is_changed(multi.target)
    return multi


class DistributedRecipe(NamedTuple):
    """What :func:`distribute_recipe` makes of a single-process recipe."""

    #: The optimizer to give the updater (a multi-node one when distributed).
    optimizer: Any
    #: This rank's slice of every global batch (:class:`GlobalBatchSlice`).
    train_iter: GlobalBatchSlice
    #: One ordered pass over this rank's shard of the held-out set.
    test_iter: Any
    #: A :class:`ShardEvaluator` of ``test_iter`` over all ranks' shards.
    evaluator: ShardEvaluator
    #: Whether this process writes logs, plots, snapshots and the model.
    is_root: bool


def distribute_recipe(dist: Optional[Distributed], model: chainer.Link,
                      optimizer: chainer.Optimizer, train: Any, test: Any,
                      batchsize: int, *, seed: int = 0,
                      test_batchsize: Optional[int] = None,
                      device: Any = None) -> DistributedRecipe:
    """Turns a single-process recipe (a model, its optimizer, training and
    held-out data) into the distributed one: the multi-node optimizer with
    the model broadcast from rank 0 (:func:`distribute`), this rank's slice
    of every global batch of ``batchsize`` (:class:`GlobalBatchSlice`) and
    an evaluator over all ranks' shards of ``test``
    (:class:`ShardEvaluator`).

    Call it once the optimizer is set up on ``model`` with its hooks,
    freezing and lr_mult applied (the same on every rank), and, for a model
    with trainable ``L.BatchNormalization``, after
    :func:`use_multi_node_batchnorm` (which must come before
    ``optimizer.setup``). Then build the Trainer from the recipe's
    optimizer and ``train_iter``, extend it with ``evaluator`` and add the
    writers (LogReport, plots, snapshots) only where ``is_root``.

    Args:
        dist: The communicator (:func:`create_distributed`); None gives the
            single-process recipe with the same data order (size 1).
        model: The link the optimizer was set up on (e.g. an
            ``L.Classifier``); also what ``evaluator`` evaluates.
        optimizer: Its optimizer.
        train: The whole training dataset (every rank can read it).
        test: The whole held-out dataset.
        batchsize: The global batch (a multiple of the process count).
        seed: Seed of the training order.
        test_batchsize: Batch of the held-out passes (default
            ``batchsize``).
        device: Where the evaluator sends batches.

    Raises:
        FinetuneError: ``batchsize`` not a multiple of the process count.
    """
    size, rank = (1, 0) if dist is None else (dist.size, dist.rank)
    train_iter = GlobalBatchSlice(train, batchsize, rank, size, seed)
    comm = None
    if dist is not None:
        optimizer = distribute(dist, model, optimizer)
        test = held_out_shard(test, dist)
        comm = dist.comm
    test_iter = chainer.iterators.SerialIterator(
        test, test_batchsize or batchsize, repeat=False, shuffle=False)
    evaluator = ShardEvaluator(test_iter, model, device, comm)
    return DistributedRecipe(optimizer, train_iter, test_iter, evaluator,
                             dist is None or dist.is_root)


def persistent_averager(model: chainer.Link, dist: Distributed) -> Any:
    """ChainerMN's AllreducePersistent: averages every float persistent
    value (BatchNormalization running statistics kept per rank) over the
    ranks, so that evaluation and rank 0's snapshots see the same ones on
    every rank. Identical values stay bit-identical."""
    return chainermn.extensions.AllreducePersistent(model, dist.comm)


class ObservationAverager(chainer.training.Extension):
    """Replaces the observations ``keys`` (training loss and accuracy: means
    over this rank's part of the batch) by their means over the ranks, the
    global batch's values, every iteration and before LogReport reads them.

    (ChainerMN's ObservationAggregator does the same per key but moves the
    values with ``to_device('native')``, which fails without ChainerX.)
    """

    trigger = 1, 'iteration'
    priority = chainer.training.PRIORITY_EDITOR

    def __init__(self, keys: Tuple[str, ...], dist: Distributed) -> None:
        self.keys = keys
        self.comm = dist.comm

    def __call__(self, trainer: Any) -> None:
        mine = {}
        for key in self.keys:
            value = trainer.observation.get(key)
            if value is not None:
                mine[key] = float(chainer.backend.CpuDevice().send(
                    getattr(value, 'array', value)))
        everyone = self.comm.bcast_obj(self.comm.gather_obj(mine))
        for key in mine:
            trainer.observation[key] = sum(
                part[key] for part in everyone) / len(everyone)


def load_snapshot_everywhere(path: Optional[str], target: Any,
                             dist: Optional[Distributed]) -> bool:
    """Loads rank 0's snapshot ``path`` into ``target`` on every rank.

    Rank 0 reads the file and broadcasts its bytes (other machines need
    not see rank 0's disk). Returns False, on every rank, when rank 0 has
    no such file.
    """
    payload = None
    if dist is None or dist.is_root:
        if path is not None and os.path.isfile(path):
            with open(path, 'rb') as f:
                payload = f.read()
    if dist is not None:
        payload = dist.comm.bcast_obj(payload)
    if payload is None:
        return False
    # Not strict: a frozen parameter's update rule never ran, so the file
    # has no optimizer state for it, which loading would otherwise demand.
    chainer.serializers.load_npz(io.BytesIO(payload), target, strict=False)
    return True
