"""Proximity operators and the global singular-value threshold."""

import numpy as np
import pytest

from galdecon.core.lowrank import low_rank_factors, nuclear_norm
from galdecon.core.operators.prox import (
    apply_svt,
    gram,
    hard_threshold,
    kept_eigenpairs,
    nuclear_norm_from_gram,
    nuclear_norm_of,
    positivity,
    singular_values_from_gram,
    smaller_gram,
    soft_threshold,
    svt,
    svt_factors,
    svt_projector,
    threshold_singular_values,
)
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
# Gram-based SVT


@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_is_float64_sum_of_outer_products(dtype):
    rng = np.random.default_rng(1)
    block = rng.standard_normal((6, 3, 4)).astype(dtype)
    g = gram(block)
    assert g.shape == (12, 12) and g.dtype == np.float64
    expected = sum(np.outer(b.ravel(), b.ravel()) for b in block.astype(np.float64))
    np.testing.assert_allclose(g, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(("n", "shape"), [(7, (4, 5)), (30, (3, 3)), (9, (3, 3))],
                         ids=["n<p", "n>p", "n=p"])
def test_singular_values_and_nuclear_norm_from_gram(n, shape):
    rng = np.random.default_rng(2)
    block = low_rank_stack(rng, n, shape, rank=2, noise=1e-2)
    matrix = block.reshape(n, -1).T
    expected = np.linalg.svd(matrix, compute_uv=False)
    values = singular_values_from_gram(gram(block))
    p = shape[0] * shape[1]
    assert values.shape == (p,)
    assert np.all(np.diff(values) <= 0)
    np.testing.assert_allclose(values[:len(expected)], expected, rtol=1e-9, atol=1e-9)
    # p > n: the extra values are (numerically) zero
    np.testing.assert_allclose(values[len(expected):], 0.0, atol=1e-6)
    # With p > n the p − n null eigenvalues of G carry rounding noise of order
    # eps·‖G‖, whose square roots (~sqrt(eps)·s_max each) add to the sum.
    rel = 1e-12 if n >= p else (p - n) * np.sqrt(np.finfo(float).eps)
    assert nuclear_norm_from_gram(gram(block)) == pytest.approx(expected.sum(), rel=rel)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize(("n", "shape"), [(8, (5, 5)), (40, (4, 5))], ids=["n<p", "n>p"])
@pytest.mark.parametrize("keep", [1, 3])
def test_svt_projector_equals_thin_svd_svt(dtype, kind, n, shape, keep):
    rng = np.random.default_rng(3)
    block = low_rank_stack(rng, n, shape, rank=3, noise=0.05, dtype=dtype)
    matrix = block.reshape(n, -1).T.astype(np.float64)  # p × n, one column per galaxy
    values = np.linalg.svd(matrix, compute_uv=False)
    threshold = threshold_between(values, keep)
    basis, scale, rank = svt_projector(gram(block), threshold, kind)
    p = shape[0] * shape[1]
    assert rank == keep
    assert basis.shape == (p, keep) and scale.shape == (keep,)
    np.testing.assert_allclose(basis.T @ basis, np.eye(keep), atol=1e-12)
    out = apply_svt(block, basis, scale)
    assert out.shape == block.shape and out.dtype == dtype
    expected = svt(matrix, threshold, kind).T.reshape(block.shape)
    np.testing.assert_allclose(out, expected, rtol=0,
                               atol=RTOL[dtype] * 10 * np.abs(expected).max())


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


def test_svt_projector_identity_at_zero_threshold_and_empty_above_the_largest_value():
    rng = np.random.default_rng(5)
    block = low_rank_stack(rng, 5, (4, 4), rank=2, noise=0.0)
    values = np.linalg.svd(block.reshape(5, -1), compute_uv=False)
    # threshold 0, hard: SVT is the identity on the matrix
    basis, scale, rank = svt_projector(gram(block), 0.0, "hard")
    assert rank >= 2
    np.testing.assert_allclose(scale, 1.0, rtol=1e-12)
    np.testing.assert_allclose(apply_svt(block, basis, scale), block, atol=1e-12)
    # a threshold well below the two true values but above Gram rounding keeps exactly 2
    basis, scale, rank = svt_projector(gram(block), 1e-6 * values[0], "hard")
    assert rank == 2 and basis.shape == (16, 2)
    np.testing.assert_allclose(scale, 1.0, rtol=1e-12)
    # a threshold above the largest singular value keeps nothing
    basis, scale, rank = svt_projector(gram(block), 1.01 * values[0], "soft")
    assert rank == 0 and basis.shape == (16, 0) and scale.shape == (0,)
    np.testing.assert_array_equal(apply_svt(block, basis, scale), 0.0)


# --------------------------------------------------------------------------------------
# the local engine's two Gram paths


def engine_factors(stack, threshold, kind, n_blocks):
    with LocalEngine(threads=1, n_blocks=n_blocks) as engine:
        engine.scatter({"images": stack, "psfs": np.ones((1, 1))}, stack.shape[0])
        assert len(engine.blocks) == min(n_blocks, stack.shape[0])
        size = (stack.shape[0], stack.shape[1] * stack.shape[2])
        basis, scale = low_rank_factors(engine, lambda b: b.images, *size, threshold, kind)
        nuclear = nuclear_norm(engine, lambda b: b.images, *size)
    return basis, scale, nuclear


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize(("n", "shape"), [(12, (5, 6)), (45, (4, 5))], ids=["n<p", "n>=p"])
@pytest.mark.parametrize("n_blocks", [1, 4])
def test_engine_low_rank_factors_equal_the_pxp_formula(kind, n, shape, n_blocks):
    rng = np.random.default_rng(6)
    stack = low_rank_stack(rng, n, shape, rank=4, noise=0.05)
    matrix = stack.reshape(n, -1).T
    values = np.linalg.svd(matrix, compute_uv=False)
    threshold = threshold_between(values, 3)
    basis, scale, nuclear = engine_factors(stack, threshold, kind, n_blocks)
    p = shape[0] * shape[1]
    assert basis.shape == (p, 3) and scale.shape == (3,)
    # the p × p (distributed) formula of ALGORITHM.md §6
    ref_basis, ref_scale, _ = svt_projector(gram(stack), threshold, kind)
    projector = basis @ np.diag(scale) @ basis.T
    reference = ref_basis @ np.diag(ref_scale) @ ref_basis.T
    np.testing.assert_allclose(projector, reference, atol=1e-10)
    np.testing.assert_allclose(np.sort(scale), np.sort(ref_scale), rtol=1e-10)
    np.testing.assert_allclose(apply_svt(stack, basis, scale),
                               svt(matrix, threshold, kind).T.reshape(stack.shape), atol=1e-10)
    assert nuclear == pytest.approx(values.sum(), rel=1e-10)


def test_engine_low_rank_paths_agree_across_the_n_equals_p_boundary():
    # The same 9-pixel galaxies: 8 of them take the n < p path; with a ninth, all-zero
    # galaxy (same singular values and left vectors) the p × p path. The SVT of the 8
    # columns must be the same either way.
    rng = np.random.default_rng(7)
    stack = low_rank_stack(rng, 8, (3, 3), rank=2, noise=0.05)
    grown = np.concatenate([stack, np.zeros((1, 3, 3))])  # a zero column: same SVD
    values = np.linalg.svd(stack.reshape(8, -1).T, compute_uv=False)
    threshold = threshold_between(values, 2)
    small = engine_factors(stack, threshold, "soft", 3)
    large = engine_factors(grown, threshold, "soft", 3)
    np.testing.assert_allclose(apply_svt(stack, *small[:2]), apply_svt(stack, *large[:2]),
                               atol=1e-11)
    # the 9 × 9 Gram of the rank-8 matrix has one null eigenvalue: sqrt(rounding) slack
    assert small[2] == pytest.approx(large[2], rel=np.sqrt(np.finfo(float).eps))


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("keep", [0, 1, 3])
def test_kept_eigenpairs_equals_the_full_decomposition(kind, keep):
    rng = np.random.default_rng(11)
    stack = low_rank_stack(rng, 60, (7, 7), rank=4, noise=0.05)
    values = np.linalg.svd(stack.reshape(60, -1), compute_uv=False)
    threshold = threshold_between(values, keep) if keep else 1.5 * values[0]
    matrix = gram(stack)
    basis, scale = kept_eigenpairs(matrix, threshold, kind)
    ref_basis, ref_scale, rank = svt_projector(matrix, threshold, kind)
    assert basis.shape == (49, rank) and rank == keep
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-12)
    np.testing.assert_allclose(basis @ np.diag(scale) @ basis.T,
                               ref_basis @ np.diag(ref_scale) @ ref_basis.T, atol=1e-12)


def test_smaller_gram_is_the_symmetric_product_of_the_smaller_side():
    rng = np.random.default_rng(12)
    wide, tall = rng.standard_normal((5, 9)), rng.standard_normal((9, 5))
    np.testing.assert_allclose(smaller_gram(wide), wide @ wide.T, rtol=1e-14)
    np.testing.assert_allclose(smaller_gram(tall), tall.T @ tall, rtol=1e-14)
    np.testing.assert_array_equal(smaller_gram(wide), smaller_gram(wide).T)
    np.testing.assert_allclose(gram(tall.reshape(9, 5, 1)), tall.T @ tall, rtol=1e-14)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_svt_factors_rows_and_gram_forms_agree(kind):
    rng = np.random.default_rng(13)
    stack = low_rank_stack(rng, 20, (7, 7), rank=3, noise=0.05)
    rows = stack.reshape(20, -1)
    values = np.linalg.svd(rows, compute_uv=False)
    threshold = threshold_between(values, 3)
    from_rows = svt_factors("rows", rows, threshold, kind)
    from_gram = svt_factors("gram", gram(stack), threshold, kind)
    np.testing.assert_allclose(apply_svt(stack, *from_rows), apply_svt(stack, *from_gram),
                               atol=1e-11)
    np.testing.assert_allclose(apply_svt(stack, *from_rows),
                               svt(rows.T, threshold, kind).T.reshape(stack.shape), atol=1e-11)
    assert nuclear_norm_of("rows", rows) == pytest.approx(values.sum(), rel=1e-12)
    # the 49 × 49 Gram of a rank-20 matrix has 29 null eigenvalues: sqrt(rounding) each,
    # which is why the rows form is taken whenever n < p
    assert nuclear_norm_of("gram", gram(stack)) == pytest.approx(values.sum(), rel=1e-7)
    with pytest.raises(ValueError, match="form"):
        svt_factors("columns", rows, threshold, kind)
