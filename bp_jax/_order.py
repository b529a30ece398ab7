"""The order `fit` reads minibatches in: a pure function of (key, step) costing O(batch), never O(rows).

Epoch e visits the rows in the order of a keyed bijection π_e of [0, n): position p of the epoch reads row
π_e(p). π_e is a Feistel network on mixed digits: with k the bit length of n − 1, u = ⌊k/2⌋ and m = ⌈n / 2^u⌉,
a row is x = r·2^u + l (l ∈ [0, 2^u), r ∈ [0, m)), and the rounds alternate

    l ← l ⊕ (F_i(r) mod 2^u)        r ← (⌊F_i(l)·m / 2^32⌋ − r) mod m,

F_i(v) = lowbias32's two multiply-xorshift stages of v ⊕ s_i, the salts s_i hashed from the key's bits and e.
Each round is an involution of [0, m·2^u) ⊇ [0, n); a move that would leave [0, n) (only from the last, partial
r = m − 1) is not made, which keeps each round an involution of [0, n), so π_e, their composition, is a bijection
of [0, n). The rounds are a fixed number (ROUNDS, more for tiny n), with no loop: every row costs the same O(1)
work, so a step's cost does not grow with the data set, no permutation is stored, and members of an ensemble,
each computing its own order under vmap, never wait for one another (a cycle-walked network waits for the row
needing the most walks). n may also be traced (an array: e.g. one row count per ensemble member): then k, u, m
and the number of rounds are computed in the program and rounds past that number are skipped, giving the same
bits as the static n. Unshuffled (`shuffle=False`, scikit-learn's
`shuffle=False`), π_e is the identity: the rows in order. With `padding` P, π_e permutes the first n − P rows and
leaves the last P in place: each epoch reads them last (e.g. zero-weight rows filling scikit-learn's short last
batch, n − P not a multiple of the batch size).
"""

import functools

import jax
import jax.numpy as jnp

#: 8 rounds make each epoch's order pass the uniformity checks (row and position, consecutive positions, pairs of
#: rows in one batch) at 20 000 keys for 65 ≤ n ≤ 4097; 6 leave pairs of rows 2^u apart ~1.5 % too often in one
#: batch (n = 354).
ROUNDS = 8
#: Below 7 bits (n ≤ 64) a round's 1–3-bit digits mix little: 8 rounds leave consecutive positions' rows
#: correlated (n = 33, 48), 24 make them and tiny n's orderings uniform (n = 4, 5).
SMALL_DOMAIN_BITS, SMALL_DOMAIN_ROUNDS = 7, 24


def mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash (lowbias32: xor-shift, multiply, xor-shift, multiply, xor-shift)."""
    return _multiply_xorshifts(x ^ (x >> 16))


def _multiply_xorshifts(x: jax.Array) -> jax.Array:
    """lowbias32 after its first xor-shift (a no-op on x < 2^16 up to the key it is xored with)."""
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _low_mask(width) -> jax.Array:
    """2^width − 1 as a uint32, for a static or traced width."""
    return (jnp.uint32(1) << jnp.asarray(width, jnp.uint32)) - jnp.uint32(1)


def _scaled(hashed: jax.Array, bound: jax.Array) -> jax.Array:
    """⌊hashed·bound / 2^32⌋ ∈ [0, bound) for uint32 hashed and bound ≤ 2^16, without 64-bit integers (exact: the
    two 16-bit halves of hashed, the sum below 2^32)."""
    return ((hashed >> 16) * bound + (((hashed & jnp.uint32(0xFFFF)) * bound) >> 16)) >> 16


def _network(value: jax.Array, salts: list[jax.Array], num_examples, bits, active_rounds=None) -> jax.Array:
    """π(value) for the Feistel network of the module docstring over [0, num_examples), one round per salt; with a
    traced `bits`, rounds from `active_rounds` on leave the row as it is."""
    num_examples = jnp.asarray(num_examples, jnp.uint32)
    low_bits = jnp.asarray(bits, jnp.uint32) // 2
    low_mask, digits = _low_mask(low_bits), ((num_examples - 1) >> low_bits) + 1  # 2^u − 1 and m
    low, row = value & low_mask, value >> low_bits
    for index, salt in enumerate(salts):
        if index % 2 == 0:  # l ← l ⊕ F(r)
            new_low, new_row = low ^ (_multiply_xorshifts(row ^ salt) & low_mask), row
        else:  # r ← c − r mod m, c = ⌊F(l)·m / 2^32⌋
            reflected = _scaled(_multiply_xorshifts(low ^ salt), digits)
            new_low, new_row = low, jnp.where(reflected >= row, reflected - row, reflected + digits - row)
        keep = ((new_row << low_bits) | new_low) < num_examples
        if active_rounds is not None:
            keep = keep & (index < active_rounds)
        low, row = jnp.where(keep, new_low, low), jnp.where(keep, new_row, row)
    # mod 2^31 − 1 leaves every row (< n ≤ 2^31 − 1) as it is, but XLA counts an integer remainder as expensive and so
    # computes the rows once, instead of fusing the network into each gather that reads them, where it would run
    # once per element gathered (b × features for x: ~10× the work for 10 features)
    return (((row << low_bits) | low) % jnp.uint32(2**31 - 1)).astype(jnp.int32)


def _salts(key: jax.Array, epoch, rounds: int) -> list[jax.Array]:
    """`rounds` 32-bit round salts hashed from the key's bits and the epoch: cheap enough to recompute every
    step, and fused by XLA with the network itself."""
    words = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    digest = mix32(jnp.asarray(epoch).astype(jnp.uint32) ^ jnp.uint32(0x9E3779B9))
    for word in jnp.ravel(words).astype(jnp.uint32):
        digest = mix32(digest ^ word)
    return [mix32(digest + jnp.uint32((i + 1) * 0x85EBCA6B % 2**32)) for i in range(rounds)]


@functools.partial(jax.jit, static_argnums=3)  # compiled once per n, also when called eagerly in a loop
def index_shuffle(key: jax.Array, epoch, positions: jax.Array, num_examples: int) -> jax.Array:
    """π_epoch(positions) for the keyed bijection π_epoch of [0, num_examples) of the module docstring."""
    bits = max(1, (num_examples - 1).bit_length())
    rounds = ROUNDS if bits >= SMALL_DOMAIN_BITS else SMALL_DOMAIN_ROUNDS
    return _network(positions.astype(jnp.uint32), _salts(key, epoch, rounds), num_examples, bits)


#: The fewest examples that take ROUNDS rounds (k ≥ SMALL_DOMAIN_BITS).
LARGE_DOMAIN = 2 ** (SMALL_DOMAIN_BITS - 1) + 1


def traced_index_shuffle(
    key: jax.Array, epoch, positions: jax.Array, num_examples: jax.Array, *, large: bool = False
) -> jax.Array:
    """`index_shuffle` for a traced n ≥ 1 (an int32 array): the same bits, k, u, m and the round count computed in
    the program, the network run for the most rounds with the ones past the count skipped. `large` (static): n is
    known to be ≥ LARGE_DOMAIN, so ROUNDS rounds, none skipped (the same bits, a third of the rounds)."""
    num_examples = jnp.asarray(num_examples, jnp.int32)
    bits = jnp.maximum(1, 32 - jax.lax.clz((num_examples - 1).astype(jnp.uint32)).astype(jnp.int32))
    if large:
        salts, active_rounds = _salts(key, epoch, ROUNDS), None
    else:
        salts = _salts(key, epoch, max(ROUNDS, SMALL_DOMAIN_ROUNDS))
        active_rounds = jnp.where(bits >= SMALL_DOMAIN_BITS, ROUNDS, SMALL_DOMAIN_ROUNDS)
    return _network(positions.astype(jnp.uint32), salts, num_examples, bits, active_rounds)


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
