"""Fuzzing the loader with mutated real models, each case isolated.

Seeds (see :func:`seeds`): Yahoo's open_nsfw (ResNet-50-1by2, V2, 23 MB),
MTCNN's P-, R- and O-Net with their published weights (tests/mtcnn_files.py),
VGG_ILSVRC_16_layers' structure in the V1 format the released model has
(1/8 width, random weights) and the generated net with every supported
layer type (tests/caffe_nets.py). Each case mutates a seed's caffemodel,
its prototxt, or both, with one to three edits drawn from the case's own
random stream (so ``--replay`` repeats it exactly): binary edits mostly at
the protobuf structure (field keys, length and value varints, found by a
wire walk) and else anywhere; text edits of lines, numbers, names, layer
types and braces.

Each case runs in a worker process: ``load_caffe`` on the mutated files,
then, if the net loaded, a forward pass layer by layer on random inputs of
the declared shape (``verify.step_outputs``, what ``inspect`` and
``verify`` run). Allowed outcomes: the net loads (and runs, or fails with
the library's error naming the layer), or the library's error naming the
file. Anything else counts as a failure: another exception ('crash'), a
library error that does not name the file ('unnamed'), a MemoryError under
the worker's address-space limit ('memory': an allocation the input asked
for), or no answer within the per-case timeout twice ('hang': the worker is
killed and replaced, and the case run once more in a fresh worker, since a
busy machine can starve one run).

As a script: ``python tests/model_fuzz.py --cases 10000`` (the nightly-sized
run documented in docs/benchmarks.rst); tests/test_model_fuzz.py runs a
CI-sized sample.
"""

import chainer_finetune  # noqa: F401  (before chainer)

import argparse
import collections
import multiprocessing
import os
import re
import resource
import shutil
import sys
import tempfile
import time
import traceback

import numpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from chainer_finetune import hub  # noqa: E402
from chainer_finetune.caffe.wire import encode_varint  # noqa: E402
from chainer_finetune.caffe.zoo_shapes import vgg16_writer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Worst outcomes; each other outcome is allowed.
FAILURES = ('crash', 'unnamed', 'memory', 'hang')

HOSTILE_VARINTS = (0, 1, 127, 128, 255, 2 ** 16, 2 ** 31 - 1, 2 ** 31,
                   2 ** 32, 2 ** 60, 2 ** 64 - 1)
HOSTILE_NUMBERS = ('0', '-1', '-3', '1', '2', '65536', '2147483648',
                   '99999999999', '9223372036854775808', '1e308', '-1e308',
                   'nan', 'inf', '0.5', '-0.0')
# How often each edit is drawn: most keep the file parseable, so that the
# cases reach the layers' builders and the forward pass.
BYTE_EDITS = {'flip': 0.2, 'set': 0.15, 'varint': 0.25, 'insert': 0.1,
              'delete': 0.1, 'duplicate': 0.1, 'zero': 0.05,
              'truncate': 0.05}
TEXT_EDITS = {'number': 0.3, 'name': 0.2, 'type': 0.15, 'delete': 0.1,
              'duplicate': 0.1, 'swap': 0.05, 'brace': 0.03,
              'garbage': 0.04, 'truncate': 0.03}
LAYER_TYPES = ('Convolution', 'Pooling', 'InnerProduct', 'ReLU', 'PReLU',
               'Softmax', 'BatchNorm', 'Scale', 'Eltwise', 'Concat', 'LRN',
               'Dropout', 'Split', 'Flatten', 'Reshape', 'Slice', 'Input',
               'Deconvolution', 'Crop', 'Bogus')


# --------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------

class Seed(collections.namedtuple('Seed', 'name caffemodel prototxt')):
    """A seed's bytes (``caffemodel``) and text (``prototxt``)."""

    @property
    def offsets(self):
        return _structure_offsets(self.caffemodel)


def _models_dir():
    if os.environ.get('CHAINER_FINETUNE_CACHE'):
        return os.path.join(os.environ['CHAINER_FINETUNE_CACHE'], 'models')
    return os.path.join(REPO, '.cache', 'models')


def seeds():
    """The seed models (fetched and written once, cached)."""
    from caffe_nets import all_layers_writer
    from mtcnn_files import fetch_mtcnn
    cache = _models_dir()
    nsfw = hub.fetch_model('open_nsfw', cache)
    files = [('open_nsfw', nsfw.caffemodel, nsfw.prototxt)]
    mtcnn = fetch_mtcnn(cache, os.path.join(cache, 'mtcnn_caffe'))
    files += [('mtcnn_' + name, *mtcnn[name]) for name in sorted(mtcnn)]
    generated = os.path.join(cache, 'fuzz_seeds')
    os.makedirs(generated, exist_ok=True)
    for name, writer, version in (
            ('vgg16_v1', vgg16_writer(width=0.125, fc_size=64, batch=1,
                                      input_form='input_dim'), 1),
            ('all_layers', all_layers_writer(), 2)):
        stem = os.path.join(generated, name)
        if not os.path.exists(stem + '.caffemodel'):
            writer.write_caffemodel(stem + '.caffemodel', version)
            writer.write_prototxt(stem + '.prototxt', version)
        files.append((name, stem + '.caffemodel', stem + '.prototxt'))
    out = []
    for name, model, text in files:
        with open(model, 'rb') as f, open(text, 'rb') as g:
            out.append(Seed(name, f.read(), g.read()))
    return out


# --------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------

def _varint_end(data, pos, end):
    for i in range(pos, min(end, pos + 10)):
        if data[i] < 0x80:
            return i + 1
    raise ValueError('bad varint')


def _varint(data, pos, end):
    value, shift, stop = 0, 0, _varint_end(data, pos, end)
    for byte in data[pos:stop]:
        value |= (byte & 0x7F) << shift
        shift += 7
    return value, stop


def _walk(data, pos, end, depth, out):
    """Appends ``(offset, kind)`` of the keys, length varints and value
    varints of ``data[pos:end]``; raises ValueError if it is not a
    message."""
    while pos < end:
        out.append((pos, KEY))
        key, pos = _varint(data, pos, end)
        wire_type = key & 7
        if key >> 3 == 0:
            raise ValueError('field 0')
        if wire_type == 0:
            out.append((pos, VALUE))
            pos = _varint_end(data, pos, end)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            out.append((pos, LENGTH))
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise ValueError('overrun')
            if depth < 6:
                inner = []
                try:
                    _walk(data, pos, pos + length, depth + 1, inner)
                    out.extend(inner)
                except (ValueError, IndexError):
                    pass   # a string or packed values, not a message
            pos += length
        else:
            raise ValueError('wire type {}'.format(wire_type))
    if pos != end:
        raise ValueError('overrun')


KEY, LENGTH, VALUE = range(3)
_OFFSETS = {}


def _structure_offsets(data):
    """``[keys, lengths, values]``: arrays of offsets of each kind."""
    key = (len(data), hash(data[:4096]))
    if key not in _OFFSETS:
        out = []
        _walk(data, 0, len(data), 0, out)
        found = numpy.array(out, dtype=numpy.int64).reshape(-1, 2)
        _OFFSETS[key] = [found[found[:, 1] == kind, 0]
                         for kind in (KEY, LENGTH, VALUE)]
    return _OFFSETS[key]


FIELD_VALUES = [0, 1, 2, 3, 7, -1, -2, 2 ** 31 - 1, -2 ** 31, 2 ** 32 - 1,
                 2 ** 63 - 1, -2 ** 63, 1e30, -0.5, float('nan'),
                 float('inf')]


def set_random_field(msg, rnd):
    """Sets one scalar field somewhere under ``msg`` to a value drawn with
    ``rnd`` (a ``random.Random``), as the field's type allows."""
    from google.protobuf.descriptor import FieldDescriptor as FD
    field = rnd.choice(msg.DESCRIPTOR.fields)
    repeated = getattr(field, 'is_repeated', None)
    if repeated is None:   # protobuf < 5
        repeated = field.label == FD.LABEL_REPEATED
    if field.type == FD.TYPE_MESSAGE:
        container = getattr(msg, field.name)
        if not repeated:
            return set_random_field(container, rnd)
        if not len(container) or rnd.random() < 0.3:
            return set_random_field(container.add(), rnd)
        return set_random_field(rnd.choice(list(container)), rnd)
    value = rnd.choice(FIELD_VALUES)
    if field.type in (FD.TYPE_STRING, FD.TYPE_BYTES):
        value = rnd.choice(['', 'x', 'data', 'label', 'fc'])
    elif field.type == FD.TYPE_BOOL:
        value = rnd.random() < 0.5
    elif field.type == FD.TYPE_ENUM:
        value = rnd.choice([v.number for v in field.enum_type.values])
    elif field.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        value = float(value)
    elif isinstance(value, float):
        value = int(value) if numpy.isfinite(value) else 0
    try:
        if repeated:
            container = getattr(msg, field.name)
            if len(container) and rnd.random() < 0.5:
                container[rnd.randrange(len(container))] = value
            else:
                container.append(value)
        else:
            setattr(msg, field.name, value)
    except (ValueError, TypeError, OverflowError):
        pass   # out of the field's range: protobuf refuses, nothing to test


def mutate_message(data, rng):
    """``data`` parsed, one field of one layer set, serialized again: an
    edit that keeps the framing intact, so it reaches the layers."""
    import random
    from chainer_finetune.caffe import caffe_pb2
    net = caffe_pb2.NetParameter.FromString(bytes(data))
    layers = net.layer or net.layers
    rnd = random.Random(int(rng.randint(2 ** 31)))
    target = rnd.choice(list(layers)) if len(layers) else net
    if target.blobs and rnd.random() < 0.2:
        blob = rnd.choice(list(target.blobs))
        if rnd.random() < 0.5 or not blob.shape.dim:
            del target.blobs[rnd.randrange(len(target.blobs))]
        else:
            dims = blob.shape.dim
            dims[rnd.randrange(len(dims))] = rnd.choice([0, 1, 2, -1, 1 << 40])
    else:
        set_random_field(target, rnd)
    data[:] = net.SerializeToString()


def mutate_bytes(data, offsets, rng):
    """One random edit of ``data`` (a bytearray), in place."""
    n = len(data)
    if n == 0:
        data[:] = rng.bytes(rng.randint(1, 9))
        return 'insert'
    # Values (num_output, kernel_size, ...) most, then keys and lengths,
    # then anywhere. Earlier edits may have shortened the data: offsets
    # past it wrap.
    where = rng.choice(4, p=[0.15, 0.15, 0.4, 0.3])
    if where < 3 and len(offsets[where]):
        at = int(offsets[where][rng.randint(len(offsets[where]))]) % n
    else:
        at = rng.randint(n)
    kind = rng.choice(list(BYTE_EDITS), p=list(BYTE_EDITS.values()))
    if kind == 'flip':
        data[at] ^= 1 << rng.randint(8)
    elif kind == 'set':
        data[at] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF,
                                   rng.randint(256)]))
    elif kind == 'insert':
        data[at:at] = rng.bytes(rng.randint(1, 9))
    elif kind == 'delete':
        del data[at:at + rng.randint(1, 17)]
    elif kind == 'truncate':
        del data[at:]
    elif kind == 'varint':
        try:
            stop = _varint_end(data, at, n)
        except ValueError:
            stop = at + 1
        data[at:stop] = encode_varint(int(rng.choice(HOSTILE_VARINTS)))
    elif kind == 'duplicate':
        start = rng.randint(n)
        data[at:at] = data[start:start + rng.randint(1, 257)]
    else:
        length = min(rng.randint(1, 65), n - at)
        data[at:at + length] = bytes(length)
    return kind


def mutate_text(text, rng):
    """One random edit of prototxt ``text`` (str); returns the new text."""
    lines = text.split('\n')
    i = rng.randint(len(lines))
    kind = rng.choice(list(TEXT_EDITS), p=list(TEXT_EDITS.values()))
    if kind in ('number', 'name', 'type'):
        pattern = {'number': r'(?<=: )-?[0-9][0-9.e+-]*',
                   'name': r'"[^"\n]*"', 'type': r'(?<=type: )"[^"]*"'}[kind]
        spots = [m.span() for m in re.finditer(pattern, text)]
        if spots:
            a, b = spots[rng.randint(len(spots))]
            if kind == 'number':
                new = str(rng.choice(HOSTILE_NUMBERS))
            elif kind == 'type':
                new = '"{}"'.format(rng.choice(LAYER_TYPES))
            else:
                names = re.findall(r'"[^"\n]*"', text)
                new = str(rng.choice(names + ['""', '"' + 'x' * 300 + '"',
                                              '"\u00e9\u4e2d"']))
            return text[:a] + new + text[b:]
    if kind == 'delete':
        del lines[i]
    elif kind == 'duplicate':
        lines.insert(i, lines[i])
    elif kind == 'swap':
        j = rng.randint(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == 'brace':
        braces = [k for k, line in enumerate(lines) if '{' in line or
                  '}' in line]
        if braces:
            k = braces[rng.randint(len(braces))]
            lines[k] = lines[k].replace('{', '', 1).replace('}', '', 1)
    elif kind == 'garbage':
        lines[i] += rng.bytes(rng.randint(1, 9)).decode('latin-1')
    else:
        lines = lines[:i]
    return '\n'.join(lines)


def make_case(all_seeds, fuzz_seed, number):
    """The files of case ``number``: ``(seed name, what, caffemodel bytes,
    prototxt bytes or None, edits)``; the same for the same arguments."""
    rng = numpy.random.RandomState([fuzz_seed, number])
    # open_nsfw is 23 MB: a third of the cases, the small seeds the rest.
    weights = numpy.array([0.3] + [0.7 / (len(all_seeds) - 1)] *
                          (len(all_seeds) - 1))
    seed = all_seeds[rng.choice(len(all_seeds), p=weights)]
    what = rng.choice(['caffemodel', 'prototxt', 'both', 'caffemodel-only'])
    model, text, edits = bytearray(seed.caffemodel), seed.prototxt, []
    for _ in range(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1])):
        if what in ('caffemodel', 'caffemodel-only') or (
                what == 'both' and rng.rand() < 0.5):
            try:
                if rng.rand() < 0.4:
                    mutate_message(model, rng)
                    edits.append('field')
                    continue
            except Exception:   # an earlier edit broke it: edit bytes
                pass
            edits.append('bytes:' + mutate_bytes(model, seed.offsets, rng))
        else:
            text = mutate_text(text.decode('utf-8', 'surrogateescape'),
                               rng).encode('utf-8', 'surrogateescape')
            edits.append('text')
    prototxt = None if what == 'caffemodel-only' else text
    return seed.name, what, bytes(model), prototxt, edits


# --------------------------------------------------------------------------
# Running a case (in a worker)
# --------------------------------------------------------------------------

def run_case(model_path, prototxt_path):
    """``(outcome, detail)`` of loading and running the files."""
    import chainer
    from chainer_finetune import load_caffe
    from chainer_finetune.caffe import verify
    from chainer_finetune.errors import ChainerFinetuneError
    named = [p for p in (model_path, prototxt_path) if p]
    try:
        net = load_caffe(model_path, prototxt_path)
    except ChainerFinetuneError as e:
        if not any(p in str(e) for p in named):
            return 'unnamed', str(e)[:300]
        return 'error', type(e).__name__
    except MemoryError as e:
        return 'memory', str(e)[:300]
    except Exception:
        return 'crash', traceback.format_exc()[-1500:]
    try:
        shapes = verify.resolve_input_shapes(net)
        if sum(int(numpy.prod(s)) for s in shapes.values()) > 2 ** 20:
            return 'loaded', 'input too large to run here'
        with chainer.using_config('train', False), \
                chainer.using_config('enable_backprop', False):
            verify.step_outputs(net, verify.random_inputs(shapes))
    except ChainerFinetuneError as e:
        return 'loaded', 'forward: ' + type(e).__name__
    except MemoryError as e:
        return 'memory', 'forward: ' + str(e)[:300]
    except Exception:
        return 'crash', 'forward: ' + traceback.format_exc()[-1500:]
    return 'ran', ''


def _address_space():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _worker(conn, work_dir, memory_bytes):
    import warnings
    import logging
    warnings.simplefilter('ignore')       # mutated weights: inf/NaN casts
    logging.disable(logging.WARNING)      # unknown-field warnings
    run_case(*_write(work_dir, 'warmup', *_warmup_files(work_dir)))
    limit = _address_space() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send(('ready', limit))
    while True:
        job = conn.recv()
        if job is None:
            break
        number, model_path, prototxt_path = job
        start = time.perf_counter()
        outcome, detail = run_case(model_path, prototxt_path)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        conn.send((number, outcome, detail, time.perf_counter() - start,
                   peak))


def _warmup_files(work_dir):
    from caffe_nets import all_layers_writer
    w = all_layers_writer()
    path = os.path.join(work_dir, 'warmup.caffemodel')
    w.write_caffemodel(path)
    with open(path, 'rb') as f:
        return f.read(), None


def _write(work_dir, stem, model, prototxt):
    """Writes a case's files as ``work_dir/stem.*`` (each worker reuses
    one stem: the disk holds one case per worker)."""
    stem = os.path.join(work_dir, stem)
    with open(stem + '.caffemodel', 'wb') as f:
        f.write(model)
    if prototxt is None:
        if os.path.exists(stem + '.prototxt'):
            os.unlink(stem + '.prototxt')
        return stem + '.caffemodel', None
    with open(stem + '.prototxt', 'wb') as f:
        f.write(prototxt)
    return stem + '.caffemodel', stem + '.prototxt'


class _Worker:
    """A worker process, replaced when a case hangs."""

    def __init__(self, work_dir, memory_bytes):
        ctx = multiprocessing.get_context('fork')
        self.conn, child = ctx.Pipe()
        self.dir = tempfile.mkdtemp(dir=work_dir)
        self.process = ctx.Process(target=_worker,
                                   args=(child, self.dir, memory_bytes),
                                   daemon=True)
        self.process.start()
        if not self.conn.poll(120):
            raise RuntimeError('fuzz worker did not start')
        self.ready, self.limit = self.conn.recv()
        self.case = None

    def kill(self):
        self.process.kill()
        self.process.join()
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------

class Result:
    """What a fuzz run found."""

    def __init__(self):
        self.counts = collections.Counter()
        self.by_seed = collections.defaultdict(collections.Counter)
        self.failures = []
        self.slowest = 0.0
        self.peak_rss = 0
        self.limit = 0
        self.seconds = 0.0

    def add(self, number, seed_name, outcome, detail, seconds, peak):
        self.counts[outcome] += 1
        self.by_seed[seed_name][outcome] += 1
        self.slowest = max(self.slowest, seconds)
        self.peak_rss = max(self.peak_rss, peak)
        if outcome in FAILURES:
            self.failures.append((number, seed_name, outcome, detail))

    def table(self):
        outcomes = sorted({o for c in self.by_seed.values() for o in c})
        rows = ['| seed | ' + ' | '.join(outcomes) + ' |',
                '|---|' + '---|' * len(outcomes)]
        for name in sorted(self.by_seed):
            rows.append('| {} | {} |'.format(name, ' | '.join(
                str(self.by_seed[name][o]) for o in outcomes)))
        rows.append('| all | {} |'.format(' | '.join(
            str(self.counts[o]) for o in outcomes)))
        return '\n'.join(rows)


def fuzz(cases, fuzz_seed=0, workers=2, timeout=30.0,
         memory_bytes=1 << 30, first=0, work_dir=None):
    """Runs cases ``first .. first + cases - 1``; returns a :class:`Result`.

    Args:
        timeout: Seconds a case may take before its worker is killed
            (counted as 'hang').
        memory_bytes: Address space a worker may map beyond what it holds
            after warming up (RLIMIT_AS).
    """
    all_seeds = seeds()
    result = Result()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        pool = [_Worker(tmp, memory_bytes) for _ in range(workers)]
        try:
            result.limit = max(w.limit for w in pool)
            pending = list(range(first, first + cases))[::-1]
            retried = set()
            names = {}
            while pending or any(w.case is not None for w in pool):
                for w in pool:
                    if w.case is None and pending:
                        number = pending.pop()
                        name, _, model, prototxt, _ = make_case(
                            all_seeds, fuzz_seed, number)
                        names[number] = name
                        # Files, not bytes, cross to the worker: its memory
                        # bound is for what the loader allocates.
                        w.conn.send((number, *_write(w.dir, 'case', model,
                                                     prototxt)))
                        w.case, w.sent = number, time.perf_counter()
                _collect(pool, result, names, timeout, tmp, memory_bytes,
                         pending, retried)
        finally:
            for w in pool:
                w.kill()
    result.seconds = time.perf_counter() - start
    return result


def _collect(pool, result, names, timeout, tmp, memory_bytes, pending,
             retried):
    """Records the answers of busy workers; a case over the timeout is
    run once more in a fresh worker (a busy machine can starve one run)
    and is a hang only if it times out again."""
    busy = [w for w in pool if w.case is not None]
    ready = multiprocessing.connection.wait([w.conn for w in busy], 0.05)
    for i, w in enumerate(pool):
        if w.case is None:
            continue
        late = None
        if w.conn in ready:
            try:
                number, outcome, detail, seconds, peak = w.conn.recv()
            except EOFError:   # the worker died: a crash of the process
                number, outcome, detail, seconds, peak = (
                    w.case, 'crash', 'worker died: exit code {}'.format(
                        w.process.exitcode), 0.0, 0)
                w.kill()
                pool[i] = _Worker(tmp, memory_bytes)
            if seconds > timeout:   # answered, but too late
                late = 'took {:.3f} s'.format(seconds)
        elif time.perf_counter() - w.sent > timeout:
            number, late = w.case, 'no answer in {} s'.format(timeout)
            w.kill()
            pool[i] = _Worker(tmp, memory_bytes)
        else:
            continue
        w.case = None
        if late is not None and number not in retried:
            retried.add(number)
            pending.append(number)
            continue
        if late is not None:
            outcome, detail, seconds, peak = 'hang', late + ' (twice)', \
                timeout, 0
        result.add(number, names[number], outcome, detail, seconds, peak)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cases', type=int, default=10000)
    parser.add_argument('--first', type=int, default=0)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--timeout', type=float, default=30.0)
    parser.add_argument('--memory-mib', type=int, default=1024)
    parser.add_argument('--replay', type=int, default=None,
                        help='write case N (and print its outcome) to '
                             'fuzz_case_N.* here')
    args = parser.parse_args(argv)
    if args.replay is not None:
        name, what, model, prototxt, edits = make_case(seeds(), args.seed,
                                                       args.replay)
        paths = _write('.', 'fuzz_case_{}'.format(args.replay), model,
                       prototxt)
        print(name, what, edits, paths, run_case(*paths))
        return 0
    result = fuzz(args.cases, args.seed, args.workers, args.timeout,
                  args.memory_mib << 20, args.first)
    print(result.table())
    print('{} cases in {:.0f} s; slowest case {:.2f} s (timeout {} s); peak '
          'worker RSS {:.0f} MiB; address-space limit {:.0f} MiB'.format(
              sum(result.counts.values()), result.seconds, result.slowest,
              args.timeout, result.peak_rss / 2 ** 20,
              result.limit / 2 ** 20))
    for failure in result.failures:
        print('FAILURE case {} ({}): {}: {}'.format(*failure))
    return 1 if result.failures else 0


if __name__ == '__main__':
    sys.exit(main())
