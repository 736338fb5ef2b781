import itertools

import numpy as np
import pytest

import nmref
from nmref import masks, transposable
from nmref.masks import check_nm, is_nm
from nmref.transposable import exact_blocks, from_blocks, greedy_blocks, nm_mask_transposable, to_blocks


def all_patterns(n, m):
    """Every m x m 0/1 matrix with n ones per row and per column (brute force, row by row)."""
    rows = np.array([[j in c for j in range(m)] for c in itertools.combinations(range(m), n)], dtype=np.int8)
    patterns, col_sums = rows[:, None, :], rows                              # (P, 1, m), (P, m)
    for _ in range(m - 1):
        sums = col_sums[:, None, :] + rows[None, :, :]                       # (P, C, m)
        p, c = np.nonzero((sums <= n).all(axis=2))
        patterns = np.concatenate([patterns[p], rows[c][:, None, :]], axis=1)
        col_sums = sums[p, c]
    return patterns.astype(bool)                                             # (P, m, m)


def random_blocks(m, count, seed):
    rng = np.random.default_rng(seed)
    gaussian = np.abs(rng.standard_normal((count, m, m)))
    ties = rng.integers(0, 3, size=(count, m, m)).astype(float)              # many equal scores
    return np.concatenate([gaussian, ties])


@pytest.mark.parametrize("n, m, count", [(2, 4, 90), (1, 4, 24), (3, 4, 24), (2, 5, 2040), (2, 6, 67950),
                                         (3, 6, 297200)])
def test_exact_equals_brute_force(n, m, count):
    patterns = all_patterns(n, m)
    assert len(patterns) == count
    blocks = random_blocks(m, 200 if m <= 4 else 12, seed=n * 10 + m)
    keep = exact_blocks(blocks, n)
    assert (keep.sum(axis=1) == n).all() and (keep.sum(axis=2) == n).all()
    best = (blocks.reshape(len(blocks), -1) @ patterns.reshape(len(patterns), -1).T.astype(float)).max(axis=1)
    assert np.allclose((blocks * keep).sum(axis=(1, 2)), best, rtol=1e-12, atol=0)


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (2, 8), (3, 6)])
@pytest.mark.parametrize("method", ["exact", "greedy"])
def test_transposable_mask_of_a_weight(n, m, method):
    w = np.random.default_rng(n + m).standard_normal((3 * m, 2 * m)).astype(np.float32)
    mask = nm_mask_transposable(w, n, m, method)
    assert mask.dtype == bool and mask.shape == w.shape
    assert is_nm(mask, n, m, transposable=True)
    check_nm(w * mask, n, m, transposable=True)
    blocks = to_blocks(mask, m)
    assert (blocks.sum(axis=1) == n).all() and (blocks.sum(axis=2) == n).all()
    assert np.array_equal(from_blocks(to_blocks(w, m), w.shape, m), w)
    plain = masks.nm_mask(w, n, m)
    assert (np.abs(w) * mask).sum() <= (np.abs(w) * plain).sum() + 1e-4        # extra constraint costs


def test_blocks_are_row_major_m_by_m_tiles():
    w = np.arange(8 * 8).reshape(8, 8)
    blocks = to_blocks(w, 4)
    assert np.array_equal(blocks[1], w[0:4, 4:8]) and np.array_equal(blocks[2], w[4:8, 0:4])


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (3, 4), (4, 8), (2, 8)])
def test_greedy_is_valid_and_close_to_exact(n, m):
    blocks = random_blocks(m, 300, seed=7)
    exact = (blocks * exact_blocks(blocks, n)).sum(axis=(1, 2))
    keep = greedy_blocks(blocks, n)
    assert (keep.sum(axis=1) == n).all() and (keep.sum(axis=2) == n).all()
    greedy = (blocks * keep).sum(axis=(1, 2))
    assert (greedy <= exact + 1e-12).all()
    assert greedy.sum() >= 0.9 * exact.sum()


def test_exact_blocks_in_chunks_equal_one_pass(monkeypatch):
    blocks = random_blocks(4, 50, seed=9)                                    # 100 blocks
    whole = exact_blocks(blocks, 2)
    monkeypatch.setattr(transposable, "BLOCK_CHUNK", 7)                      # 15 chunks, the last one short
    assert np.array_equal(exact_blocks(blocks, 2), whole)

def test_greedy_blocks_left_short_are_solved_exactly(monkeypatch):
    blocks = random_blocks(4, 100, seed=8)
    solved = []
    monkeypatch.setattr(transposable, "_repair", lambda keep, a, n: np.ones(len(keep), dtype=bool))
    monkeypatch.setattr(transposable, "exact_blocks", lambda a, n: solved.append(a) or exact_blocks(a, n))
    keep = greedy_blocks(blocks, 2)
    assert len(solved) == 1 and 0 < len(solved[0]) < len(blocks)
    assert (keep.sum(axis=1) == 2).all() and (keep.sum(axis=2) == 2).all()


def test_repair_completes_a_stuck_greedy_block():
    keep = np.zeros((1, 4, 4), dtype=bool)
    for i, j in ((0, 0), (0, 1), (1, 1), (1, 2), (2, 0), (2, 2), (3, 3)):
        keep[0, i, j] = True                               # row 3 and column 3 short, (3, 3) already kept
    scores = np.ones((1, 4, 4))
    scores[0, 1, 3] = scores[0, 3, 1] = 5.0                # best swap: add (3, 1), drop (1, 1), add (1, 3)
    failed = transposable._repair(keep, scores, 2)
    assert not failed.any() and (keep.sum(axis=1) == 2).all() and (keep.sum(axis=2) == 2).all()
    assert keep[0, 3, 1] and keep[0, 1, 3] and not keep[0, 1, 1]


def test_check_nm_transposable_names_the_column_group():
    mask = np.zeros((4, 8), dtype=bool)
    mask[:, 0:2] = True                                                      # rows 2:4, columns 4 of 4
    mask[:, 6:8] = True
    assert is_nm(mask, 2, 4) and not is_nm(mask, 2, 4, transposable=True)
    with pytest.raises(ValueError, match=r"transposed.*weight\.T\[0, 0:4\] holds 4 non-zeros"):
        check_nm(mask, 2, 4, transposable=True)


@pytest.mark.parametrize("shape, layout, match", [((4, 8, 3), "conv", "layout='linear'"),
                                                  ((6, 8), "linear", "both dims")])
def test_transposable_validator_rejects_bad_weights(shape, layout, match):
    with pytest.raises(ValueError, match=match):
        is_nm(np.ones(shape), 2, 4, layout, transposable=True)


def test_bad_input_raises():
    w = np.ones((8, 8))
    with pytest.raises(ValueError, match="2-D"):
        nm_mask_transposable(np.ones((4, 4, 4)), 2, 4)
    with pytest.raises(ValueError, match="both dims"):
        nm_mask_transposable(np.ones((6, 8)), 2, 4)
    with pytest.raises(ValueError, match="method='hungarian'"):
        nm_mask_transposable(w, 2, 4, method="hungarian")
    with pytest.raises(ValueError, match="need 1 <= n <= m"):
        nm_mask_transposable(w, 5, 4)
    with pytest.raises(TypeError, match="floating-point"):
        nm_mask_transposable(w.astype(int), 2, 4)
    w[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        nm_mask_transposable(w, 2, 4)


def test_exported():
    assert nmref.nm_mask_transposable is masks.nm_mask_transposable is nm_mask_transposable


def test_repair_picks_the_swap_that_gains_most_net_of_the_weight_it_drops():
    keep = np.zeros((1, 4, 4), dtype=bool)
    for i, j in ((0, 0), (0, 1), (1, 1), (1, 2), (2, 0), (2, 2), (3, 3)):
        keep[0, i, j] = True                               # row 3 and column 3 short
    scores = np.ones((1, 4, 4))
    scores[0, 1, 1] = 10.0                                 # dropping (1, 1) would lose more than (3, 1), (1, 3) add
    scores[0, 3, 1] = scores[0, 1, 3] = 5.0
    assert not transposable._repair(keep, scores, 2).any()
    assert keep[0, 1, 1] and keep[0, 3, 1] and not keep[0, 0, 1]   # add (3, 1), drop (0, 1), add (0, 3)
    assert (scores * keep).sum() == 21.0


def test_bad_inputs_raise_naming_the_argument():
    w = np.ones((8, 8), np.float32)
    with pytest.raises(TypeError, match="w is a list; pass a NumPy or CuPy array"):
        nm_mask_transposable(w.tolist(), 2, 4)
    with pytest.raises(ValueError, match=r"to_blocks needs a 2-D array with both dims divisible by m=4"):
        to_blocks(np.ones((6, 8)), 4)
    for solve in (exact_blocks, greedy_blocks):
        with pytest.raises(ValueError, match=r"n=5 kept out of m=4 is impossible"):
            solve(np.ones((1, 4, 4)), 5)
        with pytest.raises(ValueError, match=r"a must be \(B, m, m\) blocks"):
            solve(np.ones((1, 4, 3)), 2)
