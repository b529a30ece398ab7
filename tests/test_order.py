"""Minibatch order: `minibatch_indices(key, step, n, batch)`, each epoch a uniformly random permutation of the
rows, computed in O(batch) per step (`index_shuffle`); or, unshuffled, the rows in order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bp_jax
from bp_jax._order import LARGE_DOMAIN, index_shuffle


def test_every_example_is_seen_once_per_epoch():
    key = jax.random.key(5)
    epoch = jnp.concatenate([bp_jax.minibatch_indices(key, i, 20, 6) for i in range(3)])
    assert len(set(epoch.tolist())) == 18  # 3 full batches of 6 from 20 rows, none repeated
    next_epoch = bp_jax.minibatch_indices(key, 3, 20, 6)
    assert not np.array_equal(next_epoch, epoch[:6])


def test_a_minibatch_costs_o_batch_no_array_of_the_data_sets_size_no_sort_and_no_loop():
    rows = 1_000_000
    hlo = jax.jit(bp_jax.minibatch_indices, static_argnums=(2, 3)).lower(jax.random.key(0), 5, rows, 32).as_text()
    assert "sort" not in hlo and f"tensor<{rows}" not in hlo and f"{rows}x" not in hlo
    assert "while" not in hlo  # a fixed number of rounds: every row of every member costs the same
    indices = bp_jax.minibatch_indices(jax.random.key(0), 5, rows, 32)
    assert indices.shape == (32,) and len(set(indices.tolist())) == 32 and int(indices.max()) < rows


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 3000), seed=st.integers(0, 2**31 - 1))
@pytest.mark.slow
def test_each_epoch_is_a_permutation_of_the_rows(rows, seed):
    positions = jnp.arange(rows)
    order = np.asarray(index_shuffle(jax.random.key(seed), 0, positions, rows))
    np.testing.assert_array_equal(np.sort(order), np.arange(rows))


def test_every_position_is_equally_likely_for_every_row():
    rows, trials = 8, 4000
    orders = jax.jit(jax.vmap(lambda seed: index_shuffle(jax.random.key(seed), 0, jnp.arange(rows), rows)))(
        jnp.arange(trials)
    )
    counts = np.zeros((rows, rows))
    np.add.at(counts, (np.tile(np.arange(rows), trials), np.asarray(orders).reshape(-1)), 1)
    expected = trials / rows
    chi_squared = ((counts - expected) ** 2 / expected).sum()
    assert chi_squared < 120  # 49 degrees of freedom: the 99.99th percentile is about 95


def test_a_large_domain_order_is_uniform_over_rows_positions_and_the_next_row():
    """n = 100 (ROUNDS rounds, the small-domain tests take more): 4000 keys' epochs; rows and positions in 10 bins
    each are independent, and the row after row r is (r + d) mod n with every d in [1, n) equally likely."""
    rows, trials = 100, 4000
    orders = np.asarray(
        jax.jit(jax.vmap(lambda seed: index_shuffle(jax.random.key(seed), 0, jnp.arange(rows), rows)))(
            jnp.arange(trials)
        )
    )
    bins = np.arange(rows) // 10
    counts = np.zeros((10, 10))
    np.add.at(counts, (np.tile(bins, trials), bins[orders.reshape(-1)]), 1)
    assert ((counts - trials) ** 2 / trials).sum() < 140  # 81 degrees of freedom: 99.99th percentile ≈ 137
    steps = np.bincount(((orders[:, 1:] - orders[:, :-1]) % rows).reshape(-1), minlength=rows)[1:]
    assert ((steps - trials) ** 2 / trials).sum() < 162  # 98 degrees of freedom: 99.99th percentile ≈ 159


@pytest.mark.parametrize("step", [-1, 2.5])
def test_minibatch_indices_refuse_a_step_that_is_not_a_count(step):
    with pytest.raises(ValueError, match="step must be an integer ≥ 0"):
        bp_jax.minibatch_indices(jax.random.key(0), step, 10, 3)


def test_every_ordering_of_a_tiny_data_set_is_equally_likely():
    rows, trials = 4, 4800
    orders = jax.jit(jax.vmap(lambda seed: index_shuffle(jax.random.key(seed), 0, jnp.arange(rows), rows)))(
        jnp.arange(trials)
    )
    _, counts = np.unique(np.asarray(orders), axis=0, return_counts=True)
    expected = trials / 24
    assert len(counts) == 24
    assert ((counts - expected) ** 2 / expected).sum() < 55  # 23 degrees of freedom: 99.99th percentile ≈ 52


#: the traced row count's program, compiled once per batch size (static) and shared by every example
_traced = jax.jit(bp_jax.minibatch_indices, static_argnums=3, static_argnames="large")
#: batch sizes (one, a few, hundreds of rows): each compiles one traced program, whatever the row count
BATCHES = (1, 5, 700)


def batch_and_rows(smallest: int):
    """A batch size, and a row count of at least `smallest` and the batch size, up to 5000."""
    return st.sampled_from(BATCHES).flatmap(
        lambda batch: st.tuples(st.just(batch), st.integers(max(smallest, batch), 5000))
    )


@settings(max_examples=25, deadline=None)
@given(batch_and_rows(1), st.integers(0, 10_000), st.integers(0, 2**31 - 1))
@pytest.mark.slow
def test_a_traced_row_count_gives_the_rows_of_the_static_one(batch_rows, step, seed):
    batch, rows = batch_rows
    key = jax.random.key(seed)
    np.testing.assert_array_equal(
        _traced(key, step, jnp.int32(rows), batch), bp_jax.minibatch_indices(key, step, rows, batch)
    )


@settings(max_examples=25, deadline=None)
@given(batch_and_rows(LARGE_DOMAIN), st.integers(0, 10_000), st.integers(0, 2**31 - 1))
@pytest.mark.slow
def test_a_large_traced_row_count_takes_fewer_rounds_and_the_same_rows(batch_rows, step, seed):
    batch, rows = batch_rows
    assert rows >= LARGE_DOMAIN
    key = jax.random.key(seed)
    np.testing.assert_array_equal(
        _traced(key, step, jnp.int32(rows), batch, large=True), bp_jax.minibatch_indices(key, step, rows, batch)
    )


@pytest.mark.slow
def test_one_program_serves_every_traced_row_count():
    traced = jax.jit(lambda n: bp_jax.minibatch_indices(jax.random.key(1), 3, n, 4))
    for rows in (4, 31, 32, 64, 65, 1000):  # across the small-domain round count and several bit widths
        np.testing.assert_array_equal(traced(jnp.int32(rows)), bp_jax.minibatch_indices(jax.random.key(1), 3, rows, 4))
    assert traced._cache_size() == 1


def test_unshuffled_minibatches_are_the_rows_in_order_for_a_static_or_traced_row_count():
    """shuffle=False: step s reads rows (s mod n // b)·b … + b − 1; the last n mod b rows are never read."""
    expected = [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]
    for rows in (10, jnp.int32(10)):
        batches = [bp_jax.minibatch_indices(None, step, rows, 4, shuffle=False).tolist() for step in range(5)]
        assert batches == expected
    with pytest.raises(ValueError, match="needs a PRNG key to shuffle"):
        bp_jax.minibatch_indices(None, 0, 10, 4)


def test_padding_is_read_last_and_the_other_rows_once_per_epoch_for_a_static_or_traced_count():
    """12 rows, the last 2 padding, b = 4: each epoch reads rows 0 … 9 once in its first 10 positions (shuffled anew
    each epoch, the same for a traced count and padding) and rows 10, 11 last."""
    key = jax.random.key(3)
    epoch = lambda e, rows, pad: np.concatenate(
        [bp_jax.minibatch_indices(key, 3 * e + i, rows, 4, padding=pad) for i in range(3)]
    )
    orders = [epoch(e, 12, 2) for e in (0, 1)]
    for e, order in enumerate(orders):
        np.testing.assert_array_equal(epoch(e, jnp.int32(12), jnp.int32(2)), order)
        np.testing.assert_array_equal(np.sort(order[:10]), np.arange(10))
        assert order[10:].tolist() == [10, 11]
    assert not np.array_equal(*orders)
    with pytest.raises(ValueError, match=r"padding must be in \[0, 12\)"):
        bp_jax.minibatch_indices(key, 0, 12, 4, padding=12)
