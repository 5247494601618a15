r"""The floor of a sparse iteration on this machine: work per iteration against throughput.

A sparse Condat–Vũ iteration on one :math:`N \times N` stamp with :math:`J` wavelet bands
does, in galdecon's implementation (:mod:`galdecon.core.solver`):

- two real 2-D DFTs (one forward, one inverse) as dense products — per transform a real
  :math:`N \times N` by :math:`N \times 2H` product (:math:`H = N/2 + 1`) and a complex
  :math:`N \times N` by :math:`N \times H` product;
- Φ and Φᵀ, each a :math:`N \times N` by :math:`N \times JN` product and :math:`J`
  products of :math:`N \times N` matrices (the band differences of both are formed
  inside the fused passes);
- the fused elementwise passes of :mod:`galdecon.core.kernels` (primal step, dual step
  with both relaxations and y's band differences, the relaxations of x and of the carried
  spectrum, the gradient's spectrum and the two costs): one load of every value, about 65
  flops a pixel.

:func:`iteration_flops` counts these floating-point operations; :func:`measure` times the
same products on this machine's BLAS (one thread, the batched shapes the solver uses),
the FFT library on the same stamps, the fused passes, and the memory bandwidth of a large
copy. The floor is the products' time at that single-thread rate spread over the cores —
the arithmetic that a dense-product iteration cannot avoid; what an iteration takes beyond
it is the fused passes (a few microseconds a stamp), numpy's per-call overhead and the
threads sharing the caches; the bytes that must cross the memory
bus (the block state, read and written once per synchronisation, since a chunk's
iterations run in cache) over the bandwidth is far below it, so the floor is the
arithmetic one.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from galdecon.core.threads import blas_single_thread


def iteration_flops(size: int = 41, n_bands: int = 3) -> dict:
    """Floating-point operations of one sparse iteration on one stamp, by part."""
    n, half = size, size // 2 + 1
    real_pass = 2 * n * n * (2 * half)          # real (n×n)·(n×2H)
    complex_pass = 8 * n * n * half             # complex (n×n)·(n×H), 8 flops per MAC
    dft = real_pass + complex_pass              # one forward or one inverse transform
    wavelet = 2 * n * n * (n_bands * n) + n_bands * 2 * n**3   # Φ or Φᵀ
    pixels, spectrum = n * n, n * half
    # Fused passes (galdecon.core.kernels), flops per value: primal step 5 (with Φᵀ's
    # identity band), dual step 13 (with Φ's band difference and y's for Φᵀ) and the l1
    # cost 3 per dual value, x's relaxation 3, the gradient's spectrum 2 and its
    # relaxation 3 per real, the fidelity cost 10 per complex value.
    elementwise = ((5 + 3) * pixels + (13 + 3) * n_bands * pixels
                   + (2 + 3) * 2 * spectrum + 10 * spectrum)
    parts = {"dft_forward": dft, "dft_inverse": dft, "wavelet": wavelet,
             "wavelet_adjoint": wavelet, "elementwise": elementwise}
    parts["total"] = sum(parts.values())
    return parts


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(size: int = 41, n_bands: int = 3, chunk: int = 32, repeat: int = 20,
            rng=0, dtype=np.float64) -> dict:
    """Time the kernels of an iteration on one thread; return rates per second.

    Returns the seconds per stamp of each product family (as the solver calls them, on a
    chunk of its size, in ``dtype``), the GFLOP/s they reach, the seconds per stamp of the
    fused passes (:func:`fused_passes`), of ``scipy.fft.rfft2`` + ``irfft2`` on the same
    stamps, and the memory bandwidth (GB/s) of copying a 512 MiB array.
    """
    import scipy.fft as sfft

    from galdecon.core.operators.convolution import DenseRFFT2
    from galdecon.core.operators.wavelet import Wavelet

    rng = np.random.default_rng(rng)
    dtype = np.dtype(dtype)
    x = rng.standard_normal((chunk, size, size)).astype(dtype)
    flops = iteration_flops(size, n_bands)
    dft = DenseRFFT2((size, size), dtype)
    wavelet = Wavelet((size, size), n_bands + 1, "starlet", "periodic", dtype)
    # Preallocated outputs, as in the solver's loop (allocation is not arithmetic).
    spec = dft.forward(x)
    image, coeffs = np.empty_like(x), wavelet.op(x)
    work = np.empty(spec.shape[:2] + (2 * spec.shape[2],), dtype)
    spec_work = np.empty_like(spec)
    wave_work = np.empty(wavelet.work_shape(chunk), dtype)
    out = {"dtype": dtype.name}
    with blas_single_thread():
        dft_s = _best(lambda: (dft.forward(x, spec, work), dft.inverse(spec, image, spec_work)),
                      repeat) / chunk
        wavelet_s = _best(lambda: (wavelet.smooth_into(x, coeffs, wave_work),
                                   wavelet.adj_of_differences_into(
                                       coeffs[:, 1:], coeffs[:, -1], image, wave_work)),
                          repeat) / chunk
        fused_s = _best(fused_passes(x, coeffs, spec), repeat) / chunk
        fft_s = _best(lambda: sfft.irfft2(sfft.rfft2(x), s=(size, size)), repeat) / chunk
    out["fused_s_per_stamp"] = fused_s
    out["dense_dft_s_per_stamp"] = dft_s
    out["dense_dft_gflops"] = (flops["dft_forward"] + flops["dft_inverse"]) / dft_s / 1e9
    out["wavelet_s_per_stamp"] = wavelet_s
    out["wavelet_gflops"] = (flops["wavelet"] + flops["wavelet_adjoint"]) / wavelet_s / 1e9
    out["scipy_fft_s_per_stamp"] = fft_s
    big = np.ones(64 * 2**20)  # 512 MiB
    target = np.empty_like(big)
    copy_s = _best(lambda: np.copyto(target, big), 5)
    out["memory_gb_per_s"] = 2 * big.nbytes / copy_s / 1e9  # read + write
    return out


def fused_passes(x: np.ndarray, coeffs: np.ndarray, spec: np.ndarray):
    """A callable running one iteration's fused passes on a chunk (random data, in place)."""
    from galdecon.core import kernels

    m, n_bands = coeffs.shape[:2]
    dtype = x.dtype.type
    flat = [a.reshape(m, n_bands, -1) for a in (coeffs, coeffs.copy(), coeffs.copy())]
    weights = np.abs(coeffs.copy()).reshape(m, n_bands, -1)
    x1, x2 = x.reshape(-1), x.copy().reshape(-1)
    grad = x.copy().reshape(m, -1)
    diffs = flat[2][:, 1:].copy()
    pairs, fresh = spec.view(x.dtype), spec.copy().view(x.dtype)
    parseval = np.ones(spec.shape[-1])

    def run():
        kernels.gradient_spectrum(pairs, fresh, fresh, fresh)
        kernels.primal_step(x1.reshape(m, -1), x2.reshape(m, -1), grad, flat[0], dtype(0.5),
                            True)
        kernels.dual_step(flat[0], flat[1], flat[2], x2.reshape(m, -1), weights, dtype(0.5),
                          dtype(0.8), diffs)
        kernels.relax(fresh.reshape(-1), pairs.reshape(-1), dtype(0.8))
        kernels.relax(x1, x2, dtype(0.8))
        kernels.weighted_l1(weights, flat[1])
        kernels.fidelity_cost(spec, spec, spec, parseval)

    return run


def floor_estimate(n: int, cores: int, measured_s_per_iteration: float | None = None,
                   rates: dict | None = None, size: int = 41, n_bands: int = 3,
                   state_bytes_per_galaxy: float | None = None, sync: int = 4) -> dict:
    """The floor of one sparse iteration on ``n`` stamps and ``cores`` cores.

    Compute floor: the products at the single-thread rates measured by :func:`measure`,
    spread over the cores; the elementwise passes are counted at the product rate (a lower
    bound). Memory floor: the block state read and written once per synchronisation of
    ``sync`` iterations, at the copy bandwidth.
    """
    rates = rates or measure(size, n_bands)
    if state_bytes_per_galaxy is None and rates.get("dtype") == "float32":
        state_bytes_per_galaxy = 4 * size * size * (2 + 2 * n_bands + 2)
    flops = iteration_flops(size, n_bands)
    per_stamp = rates["dense_dft_s_per_stamp"] + rates["wavelet_s_per_stamp"]
    compute_s = n * per_stamp / cores
    if state_bytes_per_galaxy is None:
        # images, primal, dual (J bands), the carried spectrum and Φx: float64
        state_bytes_per_galaxy = 8 * size * size * (2 + 2 * n_bands + 2)
    memory_s = 2 * n * state_bytes_per_galaxy / sync / (rates["memory_gb_per_s"] * 1e9)
    result = {"n": n, "cores": cores, "flops_per_iteration": n * flops["total"],
              "compute_floor_s": compute_s, "memory_floor_s": memory_s,
              "floor_s": max(compute_s, memory_s), "rates": rates,
              "flops_per_stamp": flops}
    if measured_s_per_iteration:
        result["measured_s"] = measured_s_per_iteration
        result["fraction_of_floor"] = result["floor_s"] / measured_s_per_iteration
        result["achieved_gflops"] = n * flops["total"] / measured_s_per_iteration / 1e9
    return result
