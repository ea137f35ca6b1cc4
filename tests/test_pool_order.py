"""The order in which a pool problem's training rows are taken: a permutation, or spread evenly in time."""
import copy
import dataclasses

import numpy as np
import pytest

from core.errors import InvalidInputError
from surrogates import datasets as ds
from surrogates.config import load_config, validate_config


def test_space_filling_order_is_a_nested_permutation_with_even_prefixes():
    n = 8000
    order = ds.space_filling_order(n, seed=0)
    assert sorted(order) == list(range(n))
    np.testing.assert_array_equal(order, ds.space_filling_order(n, seed=0))
    assert not np.array_equal(order, ds.space_filling_order(n, seed=1))
    perm = np.random.default_rng(0).permutation(n)
    for k in (100, 1000, 4000):
        even = np.diff(np.sort(order[:k])).max()
        rand = np.diff(np.sort(perm[:k])).max()
        assert even <= 3.5 * n / k < rand, (k, even, rand)


def test_hh_m_takes_its_rows_spread_in_time_and_keeps_the_test_rows_apart():
    study = load_config()
    p = study.problem("hh_m")
    assert p.pool_order == "space_filling"
    test_seed, seed, vf = study.datasets.test_seed, study.datasets.seed, study.datasets.val_fraction
    test, order = ds._pool_indices(p, test_seed, seed)
    assert not set(test) & set(order) and len(test) + len(order) == ds.pool_size(p)
    train, val = ds.make_split(p, 1000, seed, test_seed, vf)
    t = np.sort(train["X"][:, 0])
    assert len(t) == 1000 and np.diff(t).max() < 4 * (p.t_end / 1000)
    assert not set(np.round(t, 6)) & set(np.round(val["X"][:, 0], 6))
    small, _ = ds.make_split(p, 500, seed, test_seed, vf)
    assert set(np.round(small["X"][:, 0], 6)) <= set(np.round(t, 6))  # prefixes nest
    # the permutation order (the default) gives other rows, with wider gaps
    q = dataclasses.replace(p, pool_order="permutation")
    other, _ = ds.make_split(q, 1000, seed, test_seed, vf)
    assert np.diff(np.sort(other["X"][:, 0])).max() > np.diff(t).max()
    assert q.fingerprint != p.fingerprint and "pool_order" not in q.describe()


def test_pool_order_is_refused_where_there_is_no_pool():
    raw = load_config().as_dict()
    bad = copy.deepcopy(raw)
    bad["problems"]["B"]["pool_order"] = "space_filling"
    with pytest.raises(InvalidInputError, match=r"problems\.B\.pool_order"):
        validate_config(bad)
    bad = copy.deepcopy(raw)
    bad["problems"]["hh_m"]["pool_order"] = "sorted"
    with pytest.raises(InvalidInputError, match=r"problems\.hh_m\.pool_order"):
        validate_config(bad)
