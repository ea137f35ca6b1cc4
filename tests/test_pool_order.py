"""The order in which a pool problem's training rows are taken: a permutation, spread evenly in time, or spread
evenly along the trace (dense where it moves fast)."""
import copy
import dataclasses
from pathlib import Path

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


def test_the_space_filling_order_takes_rows_spread_in_time_and_keeps_the_test_rows_apart():
    study = load_config()
    p = dataclasses.replace(study.problem("hh_m"), pool_order="space_filling")
    test_seed, seed, vf = study.datasets.test_seed, study.datasets.seed, study.datasets.val_fraction
    test, order, _ = ds._pool_indices(p, test_seed, seed)
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
    assert study.problem("hh_m").pool_order == "arc_length"  # the configuration's choice (tested below)


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


def test_arc_length_order_puts_rows_where_the_trace_moves_and_keeps_time_covered():
    """On hh_m's trace the arc-length order's 1000 rows follow each upstroke closely (no two neighbouring rows
    more than 0.1 apart in m, where the time-even order leaves jumps near 0.3), still cover the resting trace (no
    gap in time above 0.5 ms), nest, and leave the test rows as they are."""
    study = load_config()
    test_seed, seed, vf = study.datasets.test_seed, study.datasets.seed, study.datasets.val_fraction
    p = dataclasses.replace(study.problem("hh_m"), pool_order="arc_length")
    even = dataclasses.replace(p, pool_order="space_filling")
    X, Y = ds._pool(p)
    test, order, val_order = ds._pool_indices(p, test_seed, seed, (X, Y), vf)
    assert sorted(np.concatenate([order, val_order])) == sorted(ds._test_rows(p, test_seed)[1])  # every non-test row once
    assert len(order) == ds.max_rows(p, vf)  # the validation rows leave the largest size its rows
    np.testing.assert_array_equal(test, ds._pool_indices(even, test_seed, seed)[0])
    np.testing.assert_array_equal(order, ds._pool_indices(p, test_seed, seed, None, vf)[1])  # the pool computed or passed

    def jumps(q, n):
        train, _ = ds.make_split(q, n, seed, test_seed, vf)
        at = np.argsort(train["X"][:, 0])
        return np.diff(train["X"][at, 0]).max(), np.abs(np.diff(train["Y"][at, 0])).max(), train

    gap, dm, train = jumps(p, 1000)
    gap_even, dm_even, _ = jumps(even, 1000)
    assert dm < 0.1 < 0.25 < dm_even and gap < 0.5, (dm, dm_even, gap)
    # where m moves fast (|dm/dt| above 1 / ms: the upstrokes) the rows are several times denser
    rate = np.abs(np.gradient(Y[:, 0], X[:, 0]))
    fast = set(np.round(X[rate > 1.0, 0], 6))
    share = np.mean([t in fast for t in np.round(train["X"][:, 0], 6)])
    assert share > 3 * len(fast) / len(X), (share, len(fast) / len(X))
    small, small_val = ds.make_split(p, 500, seed, test_seed, vf)
    assert set(np.round(small["X"][:, 0], 6)) <= set(np.round(train["X"][:, 0], 6))  # prefixes nest
    assert p.fingerprint != even.fingerprint and p.describe()["pool_order"] == "arc_length"
    # the validation rows are a random draw apart from the training order: at the largest size they still
    # cover the upstrokes as the trace does (the order's last rows, where it rests, would not), and they nest
    big, big_val = ds.make_split(p, 7000, seed, test_seed, vf)
    on_fast = np.mean([t in fast for t in np.round(big_val["X"][:, 0], 6)])
    last = order[7000:7700]  # what validation would be if it took the training order's next rows
    on_fast_last = np.mean([t in fast for t in np.round(X[last, 0], 6)])
    assert len(big_val["X"]) == 700 and 0.5 < on_fast / (len(fast) / len(X)) < 2 and on_fast_last < 0.2 * on_fast
    for tr, va in ((small, small_val), (big, big_val)):
        assert not set(np.round(tr["X"][:, 0], 6)) & set(np.round(va["X"][:, 0], 6))
    assert set(np.round(small_val["X"][:, 0], 6)) <= set(np.round(big_val["X"][:, 0], 6))


def test_a_split_s_sidecar_names_its_pool_order(tmp_path):
    import re

    from core.io import load_dataset

    study = load_config("config/tiny.yaml")
    ds.write_split(study, "hh_m", 300, tmp_path / "train.npz", tmp_path / "val.npz")
    _, meta = load_dataset(tmp_path / "train.npz")
    assert meta["design"] == ds.POOL_DESIGNS["arc_length"] and "arc length" in meta["design"]
    schema = (Path(__file__).parents[1] / "core" / "config.schema.yaml").read_text()
    orders = re.search(r"pool_order: \{enum: \[([^]]*)\]\}", schema).group(1)
    assert set(ds.POOL_DESIGNS) == {o.strip() for o in orders.split(",")}  # every order the schema allows has words
