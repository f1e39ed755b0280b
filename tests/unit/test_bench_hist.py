"""The benchmark's latency histogram: bucket layout, percentile accuracy, merging."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garagekv.bench.hist import Histogram, bucket_bounds, bucket_index


def exact_percentile(values: list[int], p: float) -> int:
    s = sorted(values)
    rank = max(1, math.ceil(len(s) * p / 100))
    return s[rank - 1]


@given(st.integers(min_value=0, max_value=2**40))
def test_every_value_lies_within_its_bucket(v):
    low, high = bucket_bounds(bucket_index(v))
    assert low <= v <= high
    # relative bucket width stays under 1/128 (exact below 256)
    assert high - low <= max(0, low) / 128


def test_bucket_indexes_are_contiguous_and_ordered():
    prev_i, prev_high = -1, -1
    for v in range(0, 70_000):
        i = bucket_index(v)
        assert i in (prev_i, prev_i + 1)
        if i != prev_i:
            low, high = bucket_bounds(i)
            assert low == prev_high + 1
            prev_high = high
        prev_i = i


def test_small_values_are_exact():
    h = Histogram()
    h.record_many([1, 2, 3, 4, 100])
    assert h.percentile(0) == 1
    assert h.percentile(50) == 3
    assert h.percentile(80) == 4
    assert h.percentile(100) == 100
    assert h.count == 5 and h.total == 110 and h.min == 1 and h.max == 100
    assert h.mean == 22


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_within_one_percent_of_exact(seed):
    rng = random.Random(seed)
    values = [int(rng.lognormvariate(8, 1.5)) for _ in range(20_000)]
    h = Histogram()
    h.record_many(values)
    for p in (1, 50, 90, 99, 99.9, 100):
        exact = exact_percentile(values, p)
        assert abs(h.percentile(p) - exact) <= max(1, exact / 100), p


def test_merge_is_the_same_as_recording_everything():
    rng = random.Random(1)
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(5000):
        v = rng.randrange(1, 10**7)
        (a if i % 3 else b).record(v)
        both.record(v)
    a.merge(b)
    assert a.counts == both.counts
    assert (a.count, a.total, a.min, a.max) == (both.count, both.total, both.min, both.max)
    assert a.percentiles() == both.percentiles()


def test_dict_round_trip_and_empty():
    h = Histogram()
    assert h.percentile(99) == 0 and h.mean == 0.0
    assert Histogram().merge(Histogram()).count == 0
    h.record_many([5, 500, 50_000, -3])
    h2 = Histogram.from_dict(h.to_dict())
    assert h2.counts == h.counts and h2.min == 0 and h2.max == 50_000
    ps = h.percentiles((50, 99.9))
    assert ps["p50"] == 5 and abs(ps["p99.9"] - 50_000) <= 500
    with pytest.raises(ValueError):
        h.percentile(101)


def test_percentile_names():
    h = Histogram()
    h.record(10)
    assert list(h.percentiles()) == ["p50", "p90", "p99", "p99.9"]
