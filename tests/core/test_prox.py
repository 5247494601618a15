"""Proximity operators and the global singular-value threshold."""

import numpy as np
import pytest

from galdecon.core.lowrank import low_rank_factors, nuclear_norm
from galdecon.core.operators import svd
from galdecon.core.operators.prox import (
    apply_svt,
    hard_threshold,
    nuclear_norm_of,
    positivity,
    soft_threshold,
    svt,
    svt_factors,
    threshold_singular_values,
)
from galdecon.core.tsqr import RFactor
from galdecon.engines import LocalEngine

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def low_rank_stack(rng, n, shape, rank, noise=1e-3, dtype=np.float64):
    """n stamps whose p × n matrix is rank ``rank`` plus small noise."""
    p = shape[0] * shape[1]
    matrix = rng.standard_normal((p, rank)) @ rng.standard_normal((rank, n))
    matrix += noise * rng.standard_normal((p, n))
    return np.ascontiguousarray(matrix.T.reshape((n,) + tuple(shape))).astype(dtype)


def threshold_between(values, k):
    """A threshold halfway between the k-th and (k+1)-th singular values (no ties)."""
    return 0.5 * (values[k - 1] + values[k])


# --------------------------------------------------------------------------------------
# elementwise operators


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_threshold_closed_form(dtype):
    x = np.array([-3.0, -1.0, -0.25, 0.0, 0.5, 1.0, 2.5], dtype=dtype)
    out = soft_threshold(x, 1.0)
    assert out.dtype == dtype and out.shape == x.shape
    np.testing.assert_array_equal(out, np.array([-2.0, 0, 0, 0, 0, 0, 1.5], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_threshold_is_the_prox_of_the_weighted_l1_norm(dtype):
    # Moreau: soft(x, t) = x − clip(x, −t, t), with a per-element threshold.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 5)).astype(dtype)
    t = rng.random((4, 3, 1, 1)).astype(dtype)
    out = soft_threshold(x, t)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, x - np.clip(x, -t, t), rtol=0, atol=RTOL[dtype])
    # and it minimises ½(z − x)² + t|z| (checked against neighbouring candidates)
    objective = lambda z: 0.5 * (z - x) ** 2 + t * np.abs(z)  # noqa: E731
    for delta in (1e-3, -1e-3):
        assert np.all(objective(out) <= objective(out + dtype(delta)) + RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_threshold_closed_form_keeps_values_at_the_threshold(dtype):
    x = np.array([-3.0, -1.0, -0.25, 0.0, 0.5, 1.0, 2.5], dtype=dtype)
    out = hard_threshold(x, 1.0)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.array([-3.0, -1.0, 0, 0, 0, 1.0, 2.5], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_positivity(dtype):
    x = np.array([[-1.5, 0.0], [2.0, -0.0]], dtype=dtype)
    out = positivity(x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, [[0, 0], [2.0, 0]])
    assert x[0, 0] == -1.5  # input untouched


def test_threshold_singular_values():
    s = np.array([5.0, 2.0, 1.0, 0.5, 0.0])
    np.testing.assert_array_equal(threshold_singular_values(s, 1.0, "hard"), [5, 2, 1, 0, 0])
    np.testing.assert_array_equal(threshold_singular_values(s, 1.0, "soft"), [4, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="hard"):
        threshold_singular_values(s, 1.0, "medium")


# --------------------------------------------------------------------------------------
# the global SVT from the TSQR factor, against numpy's SVD of the whole matrix
#
# Before issue 14 the factors came from the eigen-decomposition of the Gram, whose error
# on a singular value s is ε·s_max²/s: on these ill-conditioned matrices the tests below
# (1e-12 per step) failed: the soft SVT was 7e-9 from numpy's at n = 40, p = 16.


def ill_conditioned(rng, n, p, cond, scale=100.0):
    """An n × p matrix (one row per galaxy) with log-spaced singular values s_max/s_min = cond."""
    k = min(n, p)
    u = np.linalg.qr(rng.standard_normal((n, k)))[0]
    v = np.linalg.qr(rng.standard_normal((p, k)))[0]
    values = scale * np.logspace(0, -np.log10(cond), k)
    return (u * values) @ v.T, values


def tsqr(rows, block):
    """The factor of ``rows`` folded ``block`` rows at a time, as the engines fold blocks."""
    total = None
    for lo in range(0, len(rows), block):
        value = RFactor.of_rows(rows[lo:lo + block])
        total = value if total is None else total.merged(value)
    return total


def relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize(("n", "p"), [(9, 16), (40, 16), (16, 16)], ids=["n<p", "n>p", "n=p"])
@pytest.mark.parametrize("block", [1, 5])  # blocks of one galaxy, and folds of 3p rows
def test_svt_of_every_rank_equals_numpys_svd(kind, n, p, block):
    rng = np.random.default_rng(3)
    rows, values = ill_conditioned(rng, n, p, cond=1e10)
    matrix = tsqr(rows, block).matrix()
    for keep in range(1, len(values) + 1):  # ranks 1 to min(n, p)
        threshold = values[keep] * 1.5 if keep < len(values) else 0.5 * values[-1]
        basis, scale = svt_factors(matrix, threshold, kind)
        assert basis.shape == (p, keep) and scale.shape == (keep,)
        np.testing.assert_allclose(basis.T @ basis, np.eye(keep), atol=1e-13)
        out = apply_svt(rows, basis, scale)
        assert relative(out, svt(rows, threshold, kind)) <= 1e-12, keep


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize(("n", "p", "keep"), [(1500, 441, 3), (1500, 441, 60), (450, 600, 12)])
def test_leading_triplets_by_subspace_iteration_equal_numpys_svd(kind, n, p, keep):
    # Sizes at which the few kept triplets come from the Gram-started subspace iteration
    # on R rather than from the full SVD (checked: it answers, not the fallback).
    rng = np.random.default_rng(4)
    rows, values = ill_conditioned(rng, n, p, cond=1e8)
    matrix = tsqr(rows, 64).matrix()
    threshold = float(np.sqrt(values[keep - 1] * values[keep]))
    assert svd._subspace_iteration(matrix, threshold) is not None
    basis, scale = svt_factors(matrix, threshold, kind)
    assert basis.shape == (p, keep)
    assert relative(apply_svt(rows, basis, scale), svt(rows, threshold, kind)) <= 1e-12
    assert nuclear_norm_of(matrix) == pytest.approx(values.sum(), rel=1e-13)


def test_leading_triplets_fall_back_to_the_full_svd_where_the_iteration_cannot_decide():
    rng = np.random.default_rng(5)
    rows, values = ill_conditioned(rng, 900, 441, cond=1e6)
    matrix = tsqr(rows, 100).matrix()
    many = float(np.sqrt(values[199] * values[200]))  # 200 kept: more than 20 % of p
    tiny = values[0] * 1e-7  # below the Gram's resolution at this ‖R‖
    assert svd._subspace_iteration(matrix, many) is None
    assert svd._subspace_iteration(matrix, tiny) is None
    for threshold, kind in [(many, "soft"), (tiny, "hard"), (0.0, "hard")]:
        basis, scale = svt_factors(matrix, threshold, kind)
        assert relative(apply_svt(rows, basis, scale), svt(rows, threshold, kind)) <= 1e-12
    # above the largest value: nothing kept, by the iteration's count alone
    basis, scale = svt_factors(matrix, 2 * values[0], "soft")
    assert basis.shape == (441, 0) and scale.shape == (0,)
    np.testing.assert_array_equal(apply_svt(rows, basis, scale), 0.0)


def test_nuclear_norm_keeps_the_small_singular_values():
    # The Gram's sqrt(eig) turns each value below ~sqrt(ε)·s_max into rounding noise.
    rng = np.random.default_rng(6)
    for n, p in [(30, 49), (200, 49)]:
        rows, values = ill_conditioned(rng, n, p, cond=1e12, scale=1.0)
        assert nuclear_norm_of(tsqr(rows, 7).matrix()) == pytest.approx(values.sum(),
                                                                          rel=1e-13)
        np.testing.assert_allclose(svd.singular_values(tsqr(rows, 7).triangle()), values,
                                   rtol=1e-6, atol=1e-15)


def test_svt_reference_closed_forms():
    rng = np.random.default_rng(4)
    u, _ = np.linalg.qr(rng.standard_normal((6, 3)))
    v, _ = np.linalg.qr(rng.standard_normal((4, 3)))
    matrix = (u * [3.0, 2.0, 0.5]) @ v.T
    np.testing.assert_allclose(svt(matrix, 1.0, "hard"), (u[:, :2] * [3.0, 2.0]) @ v[:, :2].T,
                               atol=1e-13)
    np.testing.assert_allclose(svt(matrix, 1.0, "soft"), (u[:, :2] * [2.0, 1.0]) @ v[:, :2].T,
                               atol=1e-13)
    np.testing.assert_allclose(svt(matrix, 0.0, "hard"), matrix, atol=1e-13)
    np.testing.assert_allclose(svt(matrix, 10.0, "soft"), 0.0, atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_svt_keeps_the_block_dtype_and_is_a_rank_k_update(dtype):
    rng = np.random.default_rng(7)
    block = low_rank_stack(rng, 6, (4, 5), rank=3, noise=0.05, dtype=dtype)
    rows = block.reshape(6, -1).astype(np.float64)
    values = np.linalg.svd(rows, compute_uv=False)
    basis, scale = svt_factors(rows, threshold_between(values, 2), "soft")
    out = apply_svt(block, basis, scale)
    assert out.shape == block.shape and out.dtype == dtype
    expected = svt(rows, threshold_between(values, 2), "soft").reshape(block.shape)
    np.testing.assert_allclose(out, expected, rtol=0, atol=RTOL[dtype] * 10)
    with pytest.raises(ValueError, match="hard"):
        svt_factors(rows, 1.0, "medium")


# --------------------------------------------------------------------------------------
# the reductions on the local engine


def engine_factors(stack, threshold, kind, n_blocks, threads=1):
    with LocalEngine(threads=threads, n_blocks=n_blocks) as engine:
        engine.scatter({"images": stack, "psfs": np.ones((1, 1))}, stack.shape[0])
        assert len(engine.blocks) == min(n_blocks, stack.shape[0])
        basis, scale = low_rank_factors(engine, _images, threshold, kind)
        nuclear = nuclear_norm(engine, _images)
    return basis, scale, nuclear


def _images(block):
    return block.images


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize(("n", "shape"), [(12, (5, 6)), (95, (4, 5))], ids=["n<p", "n>=p"])
@pytest.mark.parametrize(("n_blocks", "threads"), [(1, 1), (4, 1), (95, 2)])
def test_engine_low_rank_factors_equal_numpys_svd(kind, n, shape, n_blocks, threads):
    rng = np.random.default_rng(8)
    rows, values = ill_conditioned(rng, n, shape[0] * shape[1], cond=1e9)
    stack = rows.reshape((n,) + shape)
    threshold = float(np.sqrt(values[2] * values[3]))  # keeps three components
    basis, scale, nuclear = engine_factors(stack, threshold, kind, n_blocks, threads)
    assert basis.shape == (shape[0] * shape[1], 3) and scale.shape == (3,)
    assert relative(apply_svt(stack, basis, scale),
                    svt(rows, threshold, kind).reshape(stack.shape)) <= 1e-12
    assert nuclear == pytest.approx(values.sum(), rel=1e-13)


def test_engine_low_rank_forms_agree_across_the_n_equals_p_boundary():
    # The same 9-pixel galaxies: 8 of them are kept as rows (n < p); with a ninth, all-zero
    # galaxy (same singular values and right vectors) they are folded into R.
    rng = np.random.default_rng(9)
    stack = low_rank_stack(rng, 8, (3, 3), rank=2, noise=0.05)
    grown = np.concatenate([stack, np.zeros((1, 3, 3))])
    values = np.linalg.svd(stack.reshape(8, -1), compute_uv=False)
    threshold = threshold_between(values, 2)
    small = engine_factors(stack, threshold, "soft", 3)
    large = engine_factors(grown, threshold, "soft", 3)
    np.testing.assert_allclose(apply_svt(stack, *small[:2]), apply_svt(stack, *large[:2]),
                               atol=1e-13)
    assert small[2] == pytest.approx(large[2], rel=1e-13)
