"""Issue 11: the loader fuzzed with mutated real models (tests/model_fuzz.py).

A CI-sized sample (300 cases, about a minute on 2 cores) of the run whose
nightly size (``python tests/model_fuzz.py --cases 10000``) and figures are
in docs/benchmarks.rst. Every case loads or fails with the library's error
naming the file, within 30 s and 1 GiB of address space beyond a warmed-up
worker; the harness's own detection of hangs and unbounded allocations is
tested too.
"""

import chainer_finetune  # noqa: F401  (before chainer)

import sys

import pytest

import model_fuzz

pytestmark = [pytest.mark.network,
              pytest.mark.skipif(sys.platform != 'linux',
                                 reason='needs /proc and RLIMIT_AS')]


def test_mutated_real_models_load_or_fail_cleanly():
    result = model_fuzz.fuzz(300, fuzz_seed=1, workers=2, timeout=30.0,
                             memory_bytes=1 << 30)
    assert result.failures == [], result.failures
    assert sum(result.counts.values()) == 300
    # The mutations reach past the parser: in every seed some nets load
    # and run, some are refused.
    for name, counts in result.by_seed.items():
        assert counts['error'] > 0, (name, counts)
        assert counts['ran'] + counts['loaded'] > 0, (name, counts)
    assert result.peak_rss < result.limit


def test_mutations_are_reproducible():
    seeds = model_fuzz.seeds()
    assert {s.name for s in seeds} == {
        'open_nsfw', 'mtcnn_det1', 'mtcnn_det2', 'mtcnn_det3', 'vgg16_v1',
        'all_layers'}
    for number in (0, 7, 123):
        a = model_fuzz.make_case(seeds, 5, number)
        assert a == model_fuzz.make_case(seeds, 5, number)
    assert model_fuzz.make_case(seeds, 5, 1) != model_fuzz.make_case(
        seeds, 6, 1)


def test_structure_offsets_point_at_fields():
    # The wire walk finds every layer's key inside a real model: open_nsfw
    # has 1 Input + 53 x 3 conv/BN/Scale + ... layers.
    nsfw = next(s for s in model_fuzz.seeds() if s.name == 'open_nsfw')
    keys, lengths, values = nsfw.offsets
    data = nsfw.caffemodel
    layer_keys = [k for k in keys if data[k] == (100 << 3 | 2) & 0x7F | 0x80
                  and data[k + 1] == 100 >> 4]
    assert len(layer_keys) > 200
    assert len(values) > 0 and len(lengths) > len(layer_keys)


def test_harness_reports_hangs_and_memory():
    # A timeout no load can meet is reported as a hang (the worker is
    # killed and replaced); an address-space bound smaller than a load
    # needs is reported as an unbounded allocation.
    hung = model_fuzz.fuzz(2, workers=1, timeout=0.001)
    assert hung.counts['hang'] == 2
    starved = model_fuzz.fuzz(4, fuzz_seed=3, workers=1,
                              memory_bytes=1 << 20)
    assert starved.counts['memory'] >= 1, starved.counts
    # Mapping a model the address space cannot hold is a MemoryError that
    # names the file, not a bare OSError (what the loader raised before).
    assert starved.counts['crash'] == 0, starved.failures
