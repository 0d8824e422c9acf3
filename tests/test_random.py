"""blockwise.random against a pure-Python splitmix64 (Python ints mod 2**64) and its moments."""

from __future__ import annotations

import statistics

import pytest
import torch

from blockwise import random

M64 = 2**64
GOLDEN, MUL1, MUL2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def py_mix(z: int) -> int:
    """splitmix64's finalizer on an unsigned 64-bit int (Steele, Lea & Flood 2014)."""
    z = ((z ^ (z >> 30)) * MUL1) % M64
    z = ((z ^ (z >> 27)) * MUL2) % M64
    return z ^ (z >> 31)


def py_key(seed: int) -> int:
    return py_mix((seed + GOLDEN) % M64)


def py_fold(key: int, data: int) -> int:
    return py_mix(key ^ py_mix((data * GOLDEN + MUL1) % M64))


def py_uniform(key: int, i: int) -> float:
    return ((py_fold(key, i) >> 12) + 0.5) * 2.0**-52


def unsigned(t: torch.Tensor) -> list[int]:
    return [v % M64 for v in t.flatten().tolist()]


def test_python_reference_is_splitmix64():
    """splitmix64 from state 0 starts 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4 (Vigna's
    splitmix64.c); key(seed) is its first output from state seed."""
    assert py_key(0) == 0xE220A8397B1DCDAF
    assert py_mix((2 * GOLDEN) % M64) == 0x6E789E6AA1B965F4


SEEDS = [0, 1, 2, 12345, -1, -(2**63), 2**63 - 1]


def test_key_and_fold_equal_the_python_reference():
    keys = random.key(torch.tensor(SEEDS))
    assert keys.dtype == torch.int64
    assert unsigned(keys) == [py_key(s % M64) for s in SEEDS]
    data = [0, 1, 7, -3, 2**40]
    folded = random.fold(keys[:, None], torch.tensor(data))  # (seeds, data)
    expected = [py_fold(py_key(s % M64), d % M64) for s in SEEDS for d in data]
    assert unsigned(folded) == expected


def test_bits_and_uniform_equal_the_python_reference():
    key = random.fold(random.key(42), torch.arange(3))  # (3,)
    k = unsigned(key)
    assert unsigned(random.bits(key, (2, 5))) == [py_fold(kb, i) for kb in k for i in range(10)]
    u = random.uniform(key, (2, 5))
    assert u.shape == (3, 2, 5) and u.dtype == torch.float64
    assert u.flatten().tolist() == [py_uniform(kb, i) for kb in k for i in range(10)]


def test_uniform_is_uniform_on_the_open_interval():
    n = 200_000
    u = random.uniform(random.key(3), (n,))
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 4 * (1 / 12 / n) ** 0.5
    counts = torch.histc(u, bins=10, min=0, max=1) / n
    assert (counts - 0.1).abs().max() < 5 * (0.09 / n) ** 0.5


def test_uniform_smallest_word(monkeypatch):
    monkeypatch.setattr(random, "bits", lambda key, shape: torch.zeros(shape, dtype=torch.int64))
    assert random.uniform(random.key(0), (1,)).item() == 2.0**-53


def test_uniform_largest_word_stays_below_one(monkeypatch):
    monkeypatch.setattr(random, "bits", lambda key, shape: torch.full(shape, -1))
    assert random.uniform(random.key(0), (1,)).item() == 1 - 2.0**-53


def test_normal_moments_and_quantiles():
    n = 200_000
    z = random.normal(random.key(5), (n,))
    mean, var = z.mean(), z.var()
    skew = ((z - mean) ** 3).mean() / var**1.5
    kurt = ((z - mean) ** 4).mean() / var**2
    assert abs(mean) < 4 * (1 / n) ** 0.5
    assert abs(var - 1) < 4 * (2 / n) ** 0.5
    assert abs(skew) < 4 * (6 / n) ** 0.5
    assert abs(kurt - 3) < 4 * (24 / n) ** 0.5
    assert abs((z < 1.959963984540054).double().mean() - 0.975) < 4 * (0.975 * 0.025 / n) ** 0.5


def test_normal_is_the_inverse_cdf_of_uniform():
    key = random.key(6)
    u, z = random.uniform(key, (300,)), random.normal(key, (300,))
    expected = [statistics.NormalDist().inv_cdf(p) for p in u.tolist()]
    torch.testing.assert_close(z, torch.tensor(expected, dtype=torch.float64), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("draw", [random.uniform, random.normal])
def test_draws_are_deterministic_and_counter_based(draw):
    key = random.fold(random.key(9), torch.arange(4))
    a = draw(key, (6,))
    assert torch.equal(a, draw(key, (6,)))
    assert torch.equal(draw(key, (2, 3)), a.reshape(4, 2, 3))  # element i is hash(key, i)
    assert torch.equal(draw(key, (3,)), a[:, :3])  # so a shorter draw is a prefix
    assert torch.equal(draw(key[2], (6,)), a[2])  # and a key's draws ignore its batch
    assert torch.equal(draw(key, (6,), dtype=torch.float32), a.float())
    assert not torch.equal(a, draw(random.key(10), (6,)))


def test_fold_gives_distinct_keys():
    key = random.key(0)
    folded = random.fold(key, torch.arange(-5000, 5000))
    assert folded.unique().numel() == 10_000
    assert key.item() not in folded.tolist()
