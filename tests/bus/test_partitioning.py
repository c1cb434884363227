"""The batch partitioner agrees with Kafka's (aiokafka's murmur2 is the reference here)."""

from __future__ import annotations

import numpy as np
from aiokafka.partitioner import DefaultPartitioner, murmur2
from hypothesis import given
from hypothesis import strategies as st

from bus.partitioning import murmur2 as batch_murmur2
from bus.partitioning import positive_hashes


@given(st.lists(st.binary(max_size=80), max_size=40))
def test_murmur2_of_a_batch_equals_the_clients_key_by_key(keys: list[bytes]) -> None:
    assert batch_murmur2(keys).tolist() == [murmur2(k) & 0xFFFFFFFF for k in keys]


@given(st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=30), st.integers(1, 64))
def test_each_key_lands_where_the_default_partitioner_puts_it(keys: list[bytes], count: int) -> None:
    partitioner = DefaultPartitioner()
    every = list(range(count))
    assert [h % count for h in positive_hashes(keys)] == [partitioner(k, every, every) for k in keys]


def test_the_java_clients_reference_values() -> None:
    # Utils.murmur2 in Kafka's Java client, as signed 32-bit integers.
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    hashes = batch_murmur2(list(cases)).astype(np.int32).tolist()
    assert dict(zip(cases, hashes, strict=True)) == cases
