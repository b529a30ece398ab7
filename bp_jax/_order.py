"""The order `fit` reads minibatches in: a pure function of (key, step) costing O(batch), never O(rows).

Epoch e visits the rows in the order of a keyed bijection π_e of [0, n): position p of the epoch reads row
π_e(p). π_e is a Feistel network (ROUNDS rounds, more for tiny n; round keys hashed from the key's bits
and e) on the k-bit integers, 2^k ≥ n > 2^(k−1), restricted to [0, n) by cycle walking: apply it again
while the result is ≥ n, which stays a bijection of [0, n) and takes fewer than 2 applications on
average. Computing one row is O(1), so a step's cost does not grow with the data set, and no permutation
is stored. n may also be traced (an array: e.g. one row count per ensemble member): then k and the number of
rounds are computed in the program and rounds past that number are skipped, giving the same bits as the
static n. Unshuffled (`shuffle=False`, scikit-learn's `shuffle=False`), π_e is the identity: the rows in order.
With `padding` P, π_e permutes the first n − P rows and leaves the last P in place: each epoch reads them last
(e.g. zero-weight rows filling scikit-learn's short last batch, n − P not a multiple of the batch size).
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

ROUNDS = 6
#: Below 6 bits (n ≤ 32) a round's 1–3-bit halves mix little: 6 rounds leave some orderings several times
#: likelier than others (n = 5: 34 to 282 per 100 expected), 24 make them uniform (chi² 118 on 119 dof).
SMALL_DOMAIN_BITS, SMALL_DOMAIN_ROUNDS = 6, 24


def mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash (lowbias32: xor-shift, multiply, xor-shift, multiply, xor-shift)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _low_mask(width) -> jax.Array:
    """2^width − 1 as a uint32, for a static or traced width."""
    return (jnp.uint32(1) << jnp.asarray(width, jnp.uint32)) - jnp.uint32(1)


def _feistel(value: jax.Array, round_keys: Sequence[jax.Array], bits, active_rounds=None) -> jax.Array:
    """One pass of the Feistel network over [0, 2^bits): (L, R) → (R, L ⊕ F(R, kᵢ)) for each round,
    with L the high and R the low bits; the halves may differ by one bit, their widths swap each round.
    With a traced `bits`, rounds from `active_rounds` on leave (L, R) as they are."""
    left_bits, right_bits = bits // 2, bits - bits // 2
    left, right = value >> jnp.asarray(right_bits, jnp.uint32), value & _low_mask(right_bits)
    for index, round_key in enumerate(round_keys):
        mixed = mix32(right ^ round_key) & _low_mask(left_bits)
        swapped = (right, left ^ mixed, right_bits, left_bits)
        if active_rounds is None:
            left, right, left_bits, right_bits = swapped
        else:
            active = index < active_rounds
            left, right, left_bits, right_bits = (
                jnp.where(active, new, old) for new, old in zip(swapped, (left, right, left_bits, right_bits))
            )
    return (left << jnp.asarray(right_bits, jnp.uint32)) | right


def _round_keys(key: jax.Array, epoch, rounds: int) -> list[jax.Array]:
    """`rounds` 32-bit round keys hashed from the key's bits and the epoch: cheap enough to recompute
    every step, and fused by XLA with the network itself."""
    words = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    digest = mix32(jnp.asarray(epoch).astype(jnp.uint32) ^ jnp.uint32(0x9E3779B9))
    for word in jnp.ravel(words).astype(jnp.uint32):
        digest = mix32(digest ^ word)
    return [mix32(digest + jnp.uint32((i + 1) * 0x85EBCA6B % 2**32)) for i in range(rounds)]


def _cycle_walk(walk, value: jax.Array, num_examples) -> jax.Array:
    """Apply `walk` to each value until it lies in [0, num_examples)."""
    value = walk(value)
    value = jax.lax.while_loop(
        lambda v: jnp.any(v >= num_examples), lambda v: jnp.where(v >= num_examples, walk(v), v), value
    )
    return value.astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=3)  # compiled once per n, also when called eagerly in a loop
def index_shuffle(key: jax.Array, epoch, positions: jax.Array, num_examples: int) -> jax.Array:
    """π_epoch(positions) for the keyed bijection π_epoch of [0, num_examples) of the module docstring."""
    bits = max(1, (num_examples - 1).bit_length())
    rounds = ROUNDS if bits >= SMALL_DOMAIN_BITS else SMALL_DOMAIN_ROUNDS
    walk = functools.partial(_feistel, round_keys=_round_keys(key, epoch, rounds), bits=bits)
    return _cycle_walk(walk, positions.astype(jnp.uint32), num_examples)


#: The fewest examples that take ROUNDS rounds (k ≥ SMALL_DOMAIN_BITS).
LARGE_DOMAIN = 2 ** (SMALL_DOMAIN_BITS - 1) + 1


def traced_index_shuffle(
    key: jax.Array, epoch, positions: jax.Array, num_examples: jax.Array, *, large: bool = False
) -> jax.Array:
    """`index_shuffle` for a traced n ≥ 1 (an int32 array): the same bits, k and the round count computed in the
    program, the network run for the most rounds with the ones past the count skipped. `large` (static): n is
    known to be ≥ LARGE_DOMAIN, so ROUNDS rounds, none skipped (the same bits, a quarter of the rounds)."""
    num_examples = jnp.asarray(num_examples, jnp.int32)
    bits = jnp.maximum(1, 32 - jax.lax.clz((num_examples - 1).astype(jnp.uint32)).astype(jnp.int32))
    if large:
        round_keys, active_rounds = _round_keys(key, epoch, ROUNDS), None
    else:
        round_keys = _round_keys(key, epoch, max(ROUNDS, SMALL_DOMAIN_ROUNDS))
        active_rounds = jnp.where(bits >= SMALL_DOMAIN_BITS, ROUNDS, SMALL_DOMAIN_ROUNDS)
    walk = functools.partial(_feistel, round_keys=round_keys, bits=bits, active_rounds=active_rounds)
    return _cycle_walk(walk, positions.astype(jnp.uint32), num_examples.astype(jnp.uint32))


def minibatch_indices(
    key: jax.Array | None,
    step,
    num_examples,
    batch_size: int,
    *,
    large: bool = False,
    shuffle: bool = True,
    padding=0,
) -> jax.Array:
    """Rows of minibatch `step`: π_e(p·b), …, π_e(p·b + b − 1), O(b) work however many rows there are.

    Epoch e = step // (n // b), position p = step mod (n // b), π_e the bijection of [0, n) keyed by
    (key, e). Each epoch takes n // b full batches; the n mod b rows π_e places last wait for a later epoch.
    With `shuffle=False` π_e is the identity: rows p·b … p·b + b − 1, every epoch the same n // b batches in
    order (the last n mod b rows never read). With `padding` P, π_e permutes [0, n − P) and fixes the rest:
    for n a multiple of b, each epoch reads the n − P rows once and the P padding rows last (P < b: scikit-learn's
    epoch of ⌈(n − P)/b⌉ batches, the last one short, once the caller gives the padding zero weight).

    Args:
      key: the PRNG key the order is drawn from (a typed key or raw uint32 key data); unused (None welcome)
        with `shuffle=False`.
      step (int | jax.Array): the minibatch's index from the start of training, an integer ≥ 0 (may be traced).
      num_examples (int | jax.Array): n, the number of rows. An int, or a traced array (b ≤ n is then
        unchecked): the same rows as for that n given as an int.
      batch_size: b, the rows per minibatch, in [1, n].
      large: promises a traced n − padding ≥ LARGE_DOMAIN (fewer rounds computed, the same rows).
      shuffle: False reads the rows in order (static: a program of its own).
      padding (int | jax.Array): P, how many of the n rows, the last ones, are read in place (never shuffled);
        0 ≤ P < n (unchecked when traced).

    Returns:
      (jax.Array): the b row indices, int32.

    Raises:
      ValueError: a batch_size outside [1, n] (for an int n), a step that is not an integer ≥ 0, a padding
        outside [0, n) (for ints), or no key to shuffle with.

    Examples:
      >>> import jax
      >>> from bp_jax import minibatch_indices
      >>> key = jax.random.key(0)
      >>> first, second = (minibatch_indices(key, step, 10, 4).tolist() for step in (0, 1))
      >>> len(first), len(set(first + second))   # an epoch of 10 // 4 = 2 batches reads 8 distinct rows
      (4, 8)
      >>> minibatch_indices(None, 3, 10, 4, shuffle=False).tolist()  # epoch 1, position 1
      [4, 5, 6, 7]
      >>> minibatch_indices(key, 2, 12, 4, padding=2).tolist()[2:]  # 10 rows and 2 of padding: 3 batches an epoch
      [10, 11]
    """
    traced = isinstance(num_examples, (jax.Array, jax.core.Tracer))
    if not traced and not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size must be in [1, {num_examples}] (the number of examples), got {batch_size}")
    padded = isinstance(padding, (jax.Array, jax.core.Tracer)) or padding != 0
    if not traced and not isinstance(padding, (jax.Array, jax.core.Tracer)) and not 0 <= padding < num_examples:
        raise ValueError(f"padding must be in [0, {num_examples}) (fewer than the examples), got {padding}")
    if not jnp.issubdtype(jnp.result_type(step), jnp.integer) or (isinstance(step, int) and step < 0):
        raise ValueError(f"step must be an integer ≥ 0, got {step!r}")
    epoch, position = jnp.divmod(step, num_examples // batch_size)
    positions = position * batch_size + jnp.arange(batch_size)
    if not shuffle:
        return positions.astype(jnp.int32)
    if key is None:
        raise ValueError("minibatch_indices needs a PRNG key to shuffle (None only with shuffle=False)")
    if not padded:
        return _shuffled(key, epoch, positions, num_examples, large)
    shuffled = num_examples - padding
    inside = positions < shuffled
    rows = _shuffled(key, epoch, jnp.where(inside, positions, 0), shuffled, large)
    return jnp.where(inside, rows, positions).astype(jnp.int32)


def _shuffled(key, epoch, positions, num_examples, large: bool) -> jax.Array:
    """π_epoch(positions) of [0, num_examples), num_examples static (an int) or traced."""
    if isinstance(num_examples, (jax.Array, jax.core.Tracer)):
        return traced_index_shuffle(key, epoch, positions, num_examples, large=large)
    return index_shuffle(key, epoch, positions, num_examples)
