"""Per-step time of data-parallel training with ChainerMN, 1 against 2
processes on this machine: compute (forward + backward) and communication
(the gradient all-reduce) measured separately, median over the steps.

    python benchmarks/distributed.py [--steps 30] [--batch 32]

Starts ``mpiexec -n 1`` and ``mpiexec -n 2`` (the [mpi] extra) on itself
with ``--child``; prints a table. The global batch is the same in both, so
with 2 processes each computes half of it.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def child(steps, batch):
    import chainer_finetune  # noqa: F401  (before chainer)
    import chainer
    import chainer.functions as F
    import chainer.links as L
    import numpy
    from chainer_finetune import distributed

    dist = distributed.create_distributed('naive')
    size = 1 if dist is None else dist.size
    rank = 0 if dist is None else dist.rank

    class Net(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.c1 = L.Convolution2D(3, 32, 3, pad=1)
                self.c2 = L.Convolution2D(32, 64, 3, pad=1)
                self.fc = L.Linear(64 * 16 * 16, 10)

        def forward(self, x):
            h = F.max_pooling_2d(F.relu(self.c1(x)), 2)
            h = F.max_pooling_2d(F.relu(self.c2(h)), 2)
            return self.fc(h)

    model = L.Classifier(Net())
    optimizer = chainer.optimizers.SGD(0.01)
    optimizer.setup(model)
    optimizer = distributed.distribute(dist, model, optimizer) \
        if dist else optimizer
    rng = numpy.random.RandomState(rank)
    local = batch // size
    x = rng.rand(local, 3, 64, 64).astype(numpy.float32)
    t = rng.randint(0, 10, local).astype(numpy.int32)
    compute, comm = [], []
    for step in range(steps + 3):
        start = time.perf_counter()
        loss = model(x, t)
        model.cleargrads()
        loss.backward()
        middle = time.perf_counter()
        if dist is not None:
            dist.comm.multi_node_mean_grad(model)
        end = time.perf_counter()
        (optimizer.actual_optimizer if dist else optimizer).update()
        if step >= 3:   # warm-up
            compute.append(middle - start)
            comm.append(end - middle)
    if rank == 0:
        n_params = sum(p.size for p in model.params())
        print(json.dumps({'size': size, 'compute': float(numpy.median(
            compute)), 'comm': float(numpy.median(comm)),
            'params': int(n_params)}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--child', action='store_true')
    args = parser.parse_args()
    if args.child:
        return child(args.steps, args.batch)
    mpiexec = shutil.which('mpiexec', path=os.path.dirname(sys.executable))
    rows = []
    for n in (1, 2):
        out = subprocess.run(
            [mpiexec, '-n', str(n), sys.executable, __file__, '--child',
             '--steps', str(args.steps), '--batch', str(args.batch)],
            capture_output=True, text=True, timeout=600, check=True,
            env=dict(os.environ, PYTHONPATH=os.path.dirname(HERE)))
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]['compute'] + rows[0]['comm']
    print('global batch {}, {} parameters, {} CPU cores, median of {} '
          'steps'.format(args.batch, rows[0]['params'], os.cpu_count(),
                         args.steps))
    print('| processes | compute ms | communication ms | step ms | '
          'step vs 1 process |')
    print('|---|---|---|---|---|')
    for r in rows:
        step = r['compute'] + r['comm']
        print('| {} | {:.1f} | {:.1f} | {:.1f} | {:.2f}x |'.format(
            r['size'], r['compute'] * 1e3, r['comm'] * 1e3, step * 1e3,
            step / base))


if __name__ == '__main__':
    sys.exit(main())
