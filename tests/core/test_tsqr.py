"""TSQR: the R factor of rows spread over blocks (core/tsqr.py)."""

import pickle

import numpy as np
import pytest

from galdecon.core import tsqr
from galdecon.core.tsqr import RFactor, merge, merge_r, pack_upper, qr_r, unpack_upper


def graded(rng, n, p, cond):
    """n × p rows whose singular values fall from 1 to 1/cond (log-spaced)."""
    k = min(n, p)
    u = np.linalg.qr(rng.standard_normal((n, k)))[0]
    v = np.linalg.qr(rng.standard_normal((p, k)))[0]
    values = np.logspace(0, -np.log10(cond), k)
    return (u * values) @ v.T, values


def folded(rows, sizes):
    total = None
    start = 0
    for size in sizes:
        value = RFactor.of_rows(rows[start:start + size])
        total = value if total is None else total.merged(value)
        start += size
    assert start == len(rows)
    return total


@pytest.mark.parametrize(("n", "p"), [(7, 12), (12, 12), (100, 12), (1, 12)])
@pytest.mark.parametrize("block", [1, 3, 50])
def test_factor_has_the_singular_values_and_right_vectors_of_the_rows(n, p, block):
    rng = np.random.default_rng(0)
    rows, values = graded(rng, n, p, cond=1e12)
    sizes = [min(block, n - lo) for lo in range(0, n, block)]
    r = folded(rows, sizes).triangle()
    assert r.shape == (min(n, p), p)
    np.testing.assert_array_equal(r, np.triu(r))
    # RᵀR = AᵀA, to the rounding of ‖A‖² (Q is orthonormal)
    np.testing.assert_allclose(r.T @ r, rows.T @ rows, rtol=0, atol=1e-14)
    # and the singular values keep their relative accuracy (a Gram would lose those
    # below sqrt(ε) entirely): those of R equal those of A
    found = np.linalg.svd(r, compute_uv=False)
    np.testing.assert_allclose(found, values, rtol=1e-3, atol=1e-16)
    assert abs(found.sum() - values.sum()) <= 1e-14 * values.sum()


def test_waiting_rows_are_folded_by_one_qr_every_three_p_rows():
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((100, 10))
    total = None
    for lo in range(0, 100, 4):  # 4 rows at a time; 3p = 30 rows wait at most
        value = RFactor.of_rows(rows[lo:lo + 4])
        total = value if total is None else total.merged(value)
        assert total.waiting < tsqr.FLUSH_FACTOR * 10
        assert total.r is None or total.r.shape == (10, 10)
    assert total.r is not None  # folded at least once
    np.testing.assert_allclose(total.triangle().T @ total.triangle(), rows.T @ rows,
                               rtol=1e-13, atol=1e-12)
    # rows are kept as given (views), and never written
    view = rows[:3]
    assert RFactor.of_rows(view).rows[0].base is rows


def test_two_triangles_merge_by_the_triangular_pentagonal_qr():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((40, 9)), rng.standard_normal((5, 9))
    ra, rb = qr_r(a), qr_r(b)
    assert ra.shape == (9, 9) and rb.shape == (5, 9)
    for first, second in [(ra, ra), (ra, rb), (rb, ra), (rb, rb)]:
        merged = merge_r(first, second)
        stacked = np.concatenate([first, second])
        assert merged.shape == (min(len(stacked), 9), 9)
        np.testing.assert_allclose(merged.T @ merged, stacked.T @ stacked, rtol=1e-13,
                                   atol=1e-12)
        np.testing.assert_array_equal(merged, np.triu(merged))
    with pytest.raises(ValueError, match="columns"):
        RFactor.of_rows(a).merged(RFactor.of_rows(a[:, :3]))


def test_pickled_factor_travels_folded_as_a_packed_triangle():
    rng = np.random.default_rng(3)
    p = 30
    factor = folded(rng.standard_normal((200, p)), [64, 64, 72])
    blob = pickle.dumps(factor)
    assert len(blob) < p * (p + 1) // 2 * 8 + 400  # the upper triangle, raw float64
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.triangle(), factor.triangle())
    assert back.rows == [] and back.p == p
    # a trapezoid (fewer rows than p) packs its upper part only
    short = RFactor.of_rows(rng.standard_normal((4, p)))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(short)).triangle(),
                                  short.triangle())
    r = short.triangle()
    np.testing.assert_array_equal(unpack_upper(pack_upper(r), 4, p), r)
    assert pack_upper(r).size == sum(p - i for i in range(4))


def test_matrix_is_the_rows_while_fewer_than_p_and_none_as_no_rows():
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((5, 12))
    np.testing.assert_array_equal(RFactor.of_rows(rows).matrix(), rows)
    assert RFactor.of_rows(rng.standard_normal((20, 12))).matrix().shape == (12, 12)
    assert merge(None, None) is None
    one = RFactor.of_rows(rows)
    assert merge(one, None) is one and merge(None, one) is one
    assert RFactor(12).triangle().shape == (0, 12)
