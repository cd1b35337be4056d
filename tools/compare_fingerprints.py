#!/usr/bin/env python3
"""Compare two fingerprints written by ``tests/fingerprint.py``.

    python tools/compare_fingerprints.py A.json B.json [--rtol R] [--atol A]

Prints, for every named series, the largest absolute and relative
difference between the two files and OK/DIFF, plus the NumPy version each
file was made with. Exits 1 if any value differs beyond tolerance or a name
(or a series length) is missing from either side, 0 otherwise.

A value passes when ``|a - b| <= atol + rtol * max(|a|, |b|)``. The
defaults come from measurement. NumPy 1.26.4 vs 2.4.6 (Python 3.11,
Chainer 7.8.1, x86-64): 500 of 537 recorded values are bit-identical; the
other 37 differ by about one float32 ulp (max abs diff 2.4e-7, max rel
diff 1.3e-6 on values above 1e-2), because NumPy 2's promotion rules
(NEP 50) round two scalar coefficients differently: the 1/count factor of
F.softmax_cross_entropy (float64 scalar applied to float32 arrays) and
GradientClipping's norm (accumulated in float32 under NumPy 2, float64
under 1.x). The worst value uses 2% of the default tolerance, so rtol=1e-5
leaves ~50x headroom for other BLAS builds and CPUs, while a real change in
behaviour (a wrong patch, a changed default) moves these numbers by 1e-3
or more. atol covers values that should be 0 and come out as float32
rounding noise (the sum of a softmax gradient, ~3e-6 here).

Exit status: 0 all OK, 1 a difference or a missing name/length mismatch,
2 a file could not be read.

Only the standard library is used, so this runs in any Python 3.
"""

import argparse
import json
import math
import sys

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-6


def _load(path):
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get('values'), dict):
        raise ValueError('{}: not a fingerprint (no "values" object)'
                         .format(path))
    return data


def _diffs(a, b):
    """(max abs diff, max rel diff, worst excess over tolerance fn) pairs."""
    max_abs = 0.0
    max_rel = 0.0
    for x, y in zip(a, b):
        if x == y:  # also equal infinities
            continue
        if isinstance(x, float) and isinstance(y, float) and \
                math.isnan(x) and math.isnan(y):
            continue
        d = abs(x - y)
        if math.isnan(d):
            return float('inf'), float('inf')
        max_abs = max(max_abs, d)
        scale = max(abs(x), abs(y))
        max_rel = max(max_rel, d / scale if scale else float('inf'))
    return max_abs, max_rel


def _within(a, b, rtol, atol):
    for x, y in zip(a, b):
        if x == y:
            continue
        if isinstance(x, float) and isinstance(y, float) and \
                math.isnan(x) and math.isnan(y):
            continue
        d = abs(x - y)
        if not d <= atol + rtol * max(abs(x), abs(y)):  # False for NaN
            return False
    return True


def compare(a, b, rtol, atol, out=sys.stdout):
    """Prints the table; returns True when everything matches."""
    va, vb = a['values'], b['values']
    names = sorted(set(va) | set(vb))
    width = max([len(n) for n in names] + [4])
    out.write('A: numpy {}  ({})\n'.format(a.get('numpy', '?'),
                                           a.get('_path', '')))
    out.write('B: numpy {}  ({})\n'.format(b.get('numpy', '?'),
                                           b.get('_path', '')))
    out.write('tolerance: |a - b| <= {:g} + {:g} * max(|a|, |b|)\n\n'
              .format(atol, rtol))
    out.write('{:<{w}}  {:>12}  {:>12}  {}\n'.format(
        'name', 'max abs diff', 'max rel diff', 'result', w=width))
    ok_all = True
    overall_abs = overall_rel = 0.0
    for name in names:
        if name not in va or name not in vb:
            side = 'A' if name not in va else 'B'
            out.write('{:<{w}}  {:>12}  {:>12}  DIFF (missing in {})\n'
                      .format(name, '-', '-', side, w=width))
            ok_all = False
            continue
        xs, ys = va[name], vb[name]
        if len(xs) != len(ys):
            out.write('{:<{w}}  {:>12}  {:>12}  DIFF (length {} vs {})\n'
                      .format(name, '-', '-', len(xs), len(ys), w=width))
            ok_all = False
            continue
        max_abs, max_rel = _diffs(xs, ys)
        ok = _within(xs, ys, rtol, atol)
        ok_all = ok_all and ok
        overall_abs = max(overall_abs, max_abs)
        overall_rel = max(overall_rel, max_rel)
        out.write('{:<{w}}  {:>12.3e}  {:>12.3e}  {}\n'.format(
            name, max_abs, max_rel, 'OK' if ok else 'DIFF', w=width))
    out.write('\n{:<{w}}  {:>12.3e}  {:>12.3e}  {}\n'.format(
        'overall', overall_abs, overall_rel, 'OK' if ok_all else 'DIFF',
        w=width))
    return ok_all


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Compare two tests/fingerprint.py outputs.')
    parser.add_argument('a', help='first fingerprint JSON')
    parser.add_argument('b', help='second fingerprint JSON')
    parser.add_argument('--rtol', type=float, default=DEFAULT_RTOL,
                        help='relative tolerance (default %(default)g)')
    parser.add_argument('--atol', type=float, default=DEFAULT_ATOL,
                        help='absolute tolerance (default %(default)g)')
    args = parser.parse_args(argv)
    try:
        a, b = _load(args.a), _load(args.b)
    except (OSError, ValueError) as e:
        sys.stderr.write('compare_fingerprints: {}\n'.format(e))
        return 2
    a['_path'], b['_path'] = args.a, args.b
    return 0 if compare(a, b, args.rtol, args.atol) else 1


if __name__ == '__main__':
    sys.exit(main())
