"""What is solved: the options, validated once, and the global quantities built from data.

:class:`Settings` holds every user choice with galdecon's defaults (ALGORITHM.md §0).
:class:`Problem` adds what the data decides once per run — the noise level σ, the
spectral radius β, the low-rank threshold λ and the Condat step sizes — and is small
enough to broadcast to every worker.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft
import scipy.linalg

from galdecon.core.operators.convolution import (
    BOUNDARIES,
    kernel_to_grid,
    rfft2_stack,
    rfft_weights,
)
from galdecon.core.operators.prox import THRESHOLD_TYPES
from galdecon.core.operators.wavelet import WAVELETS, Wavelet, atrous_filters
from galdecon.errors import ConfigError

MODES = ("sparse", "lowr")
DTYPES = ("float64", "float32")
MAD_TO_SIGMA = 1.4826
# Thresholds beyond a million noise sigmas remove every detail of any real image, and
# products such as 1e300 x sigma x ||L|| overflow the cost: refused as typing errors.
MAX_THRESH_FACTOR = 1e6
#: The low-rank threshold factor when none is given, per threshold type. Soft (the
#: nuclear norm's prox, a convex problem) is the default: the reference's hard threshold
#: makes the iteration oscillate with period 2 (singular values near λ enter and leave
#: the kept set at alternate steps) and its cost rises after ~25 iterations; soft with a
#: tenth of the reference's λ converges monotonically to a better estimate
#: (docs/science.md). Hard keeps the reference's factor 1.
LOWR_THRESH_FACTORS = {"hard": 1.0, "soft": 0.1}
#: The cost window when none is given, per mode. Sparse keeps the reference's 1. Low rank
#: takes a cost every 10th iteration: its cost falls by a few 1e-5 an iteration while the
#: estimate still improves, so the reference's test (two iterations apart) stops it far
#: from its best iterate; ten apart it stops near it, and the cost (a second TSQR and the
#: nuclear norm, ~40 % of an iteration's time at n = 10,000) is paid a tenth as often
#: (docs/science.md). ``cost_window=1`` gives the reference's semantics for parity.
COST_WINDOWS = {"sparse": 1, "lowr": 10}


def default_cost_window(mode: str, n_iter: int) -> int:
    """The mode's cost window, never longer than the run."""
    return min(COST_WINDOWS[mode], n_iter)


@dataclass(frozen=True)
class Settings:
    """Every option of a deconvolution, with galdecon's defaults.

    Parameters mirror the command line (``galdecon deconvolve --help``); see
    ALGORITHM.md §0 for where they differ from sf_deconvolve.
    """

    mode: str = "sparse"
    wavelet: str = "starlet"
    n_scales: int = 4
    wave_thresh_factor: tuple = (3.0, 3.0, 4.0)
    boundary: str = "periodic"
    n_iter: int = 300
    tolerance: float = 1e-4
    cost_window: int | None = None  # COST_WINDOWS[mode]
    n_reweights: int = 1
    reweight_min_snr: float = 1.5
    relax: float = 0.8
    condat_tau: float | str = 0.5
    condat_sigma: float | str = 0.5
    positivity: bool = True
    lowr_thresh_factor: float | None = None  # LOWR_THRESH_FACTORS[lowr_thresh_type]
    lowr_thresh_type: str = "soft"
    lowr_type: str = "standard"
    noise_est: float | None = None
    dtype: str = "float64"

    def __post_init__(self):
        def fail(name, value, expected):
            raise ConfigError(f"option {name}={value!r}: expected {expected}")

        def choice(name, allowed):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                fail(name, value, f"one of {', '.join(allowed)}")

        def integer(name, minimum):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
                    or value < minimum:
                fail(name, value, f"an integer >= {minimum}")
            object.__setattr__(self, name, int(value))

        def real(name, check, expected, allow=()):
            value = getattr(self, name)
            if value in allow and isinstance(value, (str, type(None))):
                return
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
                    or not np.isfinite(value) or not check(value):
                fail(name, value, expected)
            object.__setattr__(self, name, float(value))

        choice("mode", MODES)
        choice("wavelet", tuple(sorted(WAVELETS)))
        choice("boundary", BOUNDARIES)
        choice("dtype", DTYPES)
        choice("lowr_thresh_type", THRESHOLD_TYPES)
        if self.lowr_type != "standard":
            fail("lowr_type", self.lowr_type,
                 "'standard' (the 'ngole' variant of sf_deconvolve is not supported)")
        integer("n_scales", 2)
        integer("n_iter", 1)
        if self.cost_window is None:
            object.__setattr__(self, "cost_window", default_cost_window(self.mode, self.n_iter))
        integer("cost_window", 1)
        integer("n_reweights", 0)
        if self.cost_window > self.n_iter:  # no cost would ever be computed nor tested
            fail("cost_window", self.cost_window, f"at most n_iter ({self.n_iter}): the cost "
                 "is computed every cost_window iterations")
        factors = np.atleast_1d(np.asarray(self.wave_thresh_factor, dtype=object)).ravel()
        if not all(isinstance(f, numbers.Real) and not isinstance(f, (bool, np.bool_))
                   and np.isfinite(f) and 0 <= f <= MAX_THRESH_FACTOR for f in factors):
            fail("wave_thresh_factor", self.wave_thresh_factor,
                 f"numbers in [0, {MAX_THRESH_FACTOR:g}] (thresholds in units of the noise "
                 "sigma)")
        factors = tuple(float(f) for f in factors)
        if len(factors) != self.n_scales - 1:
            fail("wave_thresh_factor", list(factors),
                 f"{self.n_scales - 1} values, one per detail scale (n_scales - 1)")
        object.__setattr__(self, "wave_thresh_factor", factors)
        real("tolerance", lambda v: v >= 0, "a finite number >= 0")
        real("relax", lambda v: 0 < v < 2, "a number in (0, 2)")
        real("reweight_min_snr", lambda v: v >= 0, "a finite number >= 0 (0: reweight every "
             "galaxy)")
        real("condat_tau", lambda v: v > 0, "a positive number or 'auto'", allow=("auto",))
        real("condat_sigma", lambda v: v > 0, "a positive number or 'auto'", allow=("auto",))
        if self.lowr_thresh_factor is None:
            object.__setattr__(self, "lowr_thresh_factor",
                               LOWR_THRESH_FACTORS[self.lowr_thresh_type])
        real("lowr_thresh_factor", lambda v: 0 <= v <= MAX_THRESH_FACTOR,
             f"a number in [0, {MAX_THRESH_FACTOR:g}] (in units of the noise sigma)")
        real("noise_est", lambda v: v > 0, "a positive number, 'per-image' or 'border'",
             allow=(None,) + NOISE_METHODS)
        if not isinstance(self.positivity, (bool, np.bool_)):
            fail("positivity", self.positivity, "True or False")
        object.__setattr__(self, "positivity", bool(self.positivity))

    def replace(self, **changes) -> Settings:
        """Return a copy with some options changed (validated again).

        A new threshold type with no factor takes that type's default factor, unless the
        factor was not the old type's default (then it was chosen, and is kept); a new mode
        likewise takes its default cost window.
        """
        if {"mode", "n_iter"} & set(changes) and "cost_window" not in changes \
                and self.cost_window == default_cost_window(self.mode, self.n_iter):
            changes["cost_window"] = None
        if "lowr_thresh_type" in changes and "lowr_thresh_factor" not in changes \
                and self.lowr_thresh_factor == LOWR_THRESH_FACTORS[self.lowr_thresh_type]:
            changes["lowr_thresh_factor"] = None
        return dataclasses.replace(self, **changes)

    @property
    def n_bands(self) -> int:
        """Number of wavelet detail scales J."""
        return self.n_scales - 1


#: Per-image noise estimates (``noise_est``): σ_i from each stamp's MAD, or from the MAD of
#: its border pixels only (:func:`galdecon.core.noise.image_sigmas`).
NOISE_METHODS = ("per-image", "border")


@dataclass(frozen=True)
class Problem:
    """Settings plus the global quantities computed once from the data.

    Attributes
    ----------
    settings : Settings
    n_images : int
        Number of galaxies n.
    shape : tuple of int
        Stamp shape.
    noise_sigma : float
        σ, from ``--noise-est`` or 1.4826 × MAD of all pixels; with per-image estimates
        the RMS of the σ_i (the noise level of the whole matrix, for low rank's λ).
    beta : float
        ρ(HᵀH), the Lipschitz constant of the data-fidelity gradient.
    lipschitz_l : float
        ‖L‖² (ΦᵀΦ spectral radius for sparse, 1 for low rank).
    tau, sigma : float
        Condat primal and dual step sizes.
    lowr_lambda : float
        Low-rank threshold λ (0 in sparse mode).
    """

    settings: Settings
    n_images: int
    shape: tuple
    noise_sigma: float
    beta: float
    lipschitz_l: float
    tau: float
    sigma: float
    lowr_lambda: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def dtype(self) -> np.dtype:
        """Working dtype."""
        return np.dtype(self.settings.dtype)

    def wavelet(self) -> Wavelet:
        """The wavelet operator of this problem (built on demand, cheap)."""
        s = self.settings
        return Wavelet(self.shape, s.n_scales, s.wavelet, s.boundary, self.dtype)

    def summary(self) -> dict:
        """The derived quantities, for the run record."""
        return {
            "noise_sigma": self.noise_sigma,
            "beta": self.beta,
            "lipschitz_l": self.lipschitz_l,
            "tau": self.tau,
            "sigma": self.sigma,
            "lowr_lambda": self.lowr_lambda,
        } | self.extra


def mad_sigma(values: np.ndarray) -> float:
    """Return 1.4826 · median(|Y − median(Y)|) over all values."""
    values = np.asarray(values, dtype=np.float64).ravel()
    centre = np.median(values)
    return float(MAD_TO_SIGMA * np.median(np.abs(values - centre)))


#: Stamps up to this many pixels get ‖Φ‖² (zero boundary) from the dense p × p matrix of
#: ΦᵀΦ: about a second at 41×41, exact to rounding.
DENSE_NORM_PIXELS = 4096


def wavelet_norm_sq(shape, settings: Settings) -> float:
    """Return ‖Φ‖² = ρ(ΦᵀΦ) exactly (Fourier for periodic, a symmetric eigensolver for zero)."""
    return _wavelet_norm_sq((int(shape[0]), int(shape[1])), settings.boundary,
                            settings.n_scales, settings.wavelet)


@functools.lru_cache(maxsize=16)
def _wavelet_norm_sq(shape, boundary, n_scales, wavelet_name) -> float:
    if boundary == "periodic":
        filters = atrous_filters(shape, n_scales, wavelet_name)
        spectra = np.abs(sfft.fft2(kernel_to_grid(filters, shape))) ** 2
        return float(spectra.sum(axis=0).max())
    wavelet = Wavelet(shape, n_scales, wavelet_name, "zero")
    size = shape[0] * shape[1]
    if size <= DENSE_NORM_PIXELS:
        # The top eigenvalues of ΦᵀΦ cluster near 1, where power and Lanczos iterations
        # stall (ARPACK needed ~4·10⁵ products at 41×41); the dense matrix is p images.
        dense = wavelet.adj(wavelet.op(np.eye(size).reshape((size,) + shape)))
        matrix = dense.reshape(size, size)
        return float(scipy.linalg.eigvalsh(0.5 * (matrix + matrix.T),
                                           subset_by_index=(size - 1, size - 1))[0])
    from scipy.sparse.linalg import LinearOperator, eigsh

    def normal(vec):
        image = np.asarray(vec, dtype=np.float64).reshape((1,) + shape)
        return wavelet.adj(wavelet.op(image)).ravel()

    start = np.random.default_rng(20170828).random(size) + 0.5
    operator = LinearOperator((size, size), matvec=normal, dtype=np.float64)
    # Eigenvalue error <= residual² / gap: tol 1e-8 gives a value exact to ~1e-12.
    return float(eigsh(operator, k=1, which="LA", v0=start, tol=1e-8, ncv=min(size, 64),
                       return_eigenvectors=False)[0])


def step_sizes(settings: Settings, beta: float, lipschitz_l: float) -> tuple[float, float]:
    """Return (tau, sigma): fixed values, or 'auto' from the exact norms.

    'auto' satisfies Condat's condition 1/τ − σ‖L‖² ≥ β/2 with equality: σ = 0.5 unless
    given, τ = 1/(β/2 + σ‖L‖²).
    """
    sigma = 0.5 if settings.condat_sigma == "auto" else float(settings.condat_sigma)
    if settings.condat_tau == "auto":
        tau = 1.0 / (beta / 2.0 + sigma * lipschitz_l)
    else:
        tau = float(settings.condat_tau)
    return tau, sigma


def lowr_threshold(settings: Settings, noise_sigma: float, beta: float, n_images: int,
                   shape) -> float:
    """Return λ = f · σ · sqrt(max(n + 1, p)) · β (ALGORITHM.md §6)."""
    p = int(shape[0]) * int(shape[1])
    return float(settings.lowr_thresh_factor * noise_sigma * np.sqrt(max(n_images + 1, p)) * beta)


def make_problem(settings: Settings, n_images: int, shape, noise_sigma: float,
                 beta: float) -> Problem:
    """Assemble a :class:`Problem` from the global reductions σ and β."""
    shape = (int(shape[0]), int(shape[1]))
    if settings.mode == "sparse":
        lipschitz_l = wavelet_norm_sq(shape, settings)
        lam = 0.0
    else:
        lipschitz_l = 1.0
        lam = lowr_threshold(settings, noise_sigma, beta, n_images, shape)
        if not np.isfinite(lam):  # e.g. noise_est=1e308: the SVT would fail on inf
            raise ConfigError(
                f"option lowr_thresh_factor={settings.lowr_thresh_factor!r}: the low-rank "
                f"threshold (factor x sigma x sqrt(max(n + 1, p)) x beta, sigma = "
                f"{noise_sigma:g}) is not finite; expected a smaller factor or noise_est")
    check_noise(settings, noise_sigma)
    tau, sigma = step_sizes(settings, beta, lipschitz_l)
    check_steps(tau, sigma, beta, lipschitz_l)
    return Problem(settings=settings, n_images=int(n_images), shape=shape,
                   noise_sigma=float(noise_sigma), beta=float(beta),
                   lipschitz_l=float(lipschitz_l), tau=tau, sigma=sigma, lowr_lambda=lam)


def check_noise(settings: Settings, noise_sigma: float) -> None:
    """Refuse a noise σ of zero or a non-finite one: every threshold is proportional to it."""
    if np.isfinite(noise_sigma) and noise_sigma > 0:
        return
    if settings.noise_est is None:
        raise ConfigError(
            f"the noise estimate from the images' median absolute deviation is "
            f"{noise_sigma:g} (at least half the pixels equal the median, e.g. integer or "
            "padded stamps), so every threshold would vanish; give the noise sigma with "
            "--noise-est SIGMA (noise_est= in the Python API)")
    raise ConfigError(f"option noise_est={noise_sigma!r}: expected a finite number > 0")


def check_steps(tau: float, sigma: float, beta: float, lipschitz_l: float) -> None:
    r"""Refuse step sizes outside Condat's condition :math:`1/τ − σ\|L\|^2 ≥ β/2`.

    Outside it the iteration is not guaranteed to converge and, with large τ, diverges
    (a relative slack of 1e-12 accepts the 'auto' steps, which meet it with equality).
    """
    margin = 1.0 / tau - sigma * lipschitz_l - beta / 2.0
    if margin >= -1e-12 * (1.0 / tau):
        return
    largest = 1.0 / (beta / 2.0 + sigma * lipschitz_l)
    shown = float(f"{largest:.8g}")
    if shown > largest:  # the value shown must itself be valid: round it down
        shown = float(f"{largest * (1 - 5e-8):.8g}")
    raise ConfigError(
        f"option condat_tau={tau!r}: expected at most {shown:.8g} with condat_sigma="
        f"{sigma:g}: the steps must satisfy 1/tau - sigma*||L||^2 >= beta/2 (here "
        f"1/tau - sigma*||L||^2 = {1.0 / tau - sigma * lipschitz_l:.6g}, beta/2 = "
        f"{beta / 2.0:.6g}, ||L||^2 = {lipschitz_l:.6g}); or give condat_tau 'auto'")


def sparse_weights(psfs: np.ndarray, shape, settings: Settings, noise_sigma: float) -> np.ndarray:
    r"""Return the initial sparse weights :math:`W_{i,j} = σ k_j ‖φ_j ⊛ \mathrm{rot}(h_i)‖_2`.

    Parameters
    ----------
    psfs : ndarray, shape (m, k0, k1) or (k0, k1)
        The block's PSFs (one shared PSF gives one row).
    shape : tuple of int
        Stamp shape.
    settings : Settings
    noise_sigma : float

    Returns
    -------
    ndarray, shape (m, J), float64

    Notes
    -----
    The norm is that of the noise of scale j after back-projection by Hᵀ: computed by
    Parseval on the stamp grid for the periodic boundary (the reference's wrapped
    convolution), and on a grid large enough for the full linear convolution for ``zero``.
    """
    psfs = np.asarray(psfs, dtype=np.float64)
    if psfs.ndim == 2:
        psfs = psfs[None]
    filters = atrous_filters(shape, settings.n_scales, settings.wavelet)
    if settings.boundary == "periodic":
        grid = tuple(shape)
    else:
        grid = (sfft.next_fast_len(shape[0] + psfs.shape[1] - 1, real=True),
                sfft.next_fast_len(shape[1] + psfs.shape[2] - 1, real=True))
    psf_spec = rfft2_stack(kernel_to_grid(psfs, grid))
    filt_spec = sfft.rfft2(kernel_to_grid(filters, grid))
    power = np.abs(psf_spec[:, None]) ** 2 * np.abs(filt_spec[None]) ** 2
    norms_sq = np.tensordot(power, rfft_weights(grid[1]), axes=([3], [0])).sum(axis=2)
    norms = np.sqrt(norms_sq / (grid[0] * grid[1]))
    return noise_sigma * np.asarray(settings.wave_thresh_factor)[None, :] * norms


def setup_scratch_bytes(n_in_flight: int, n_pixels: int, spectrum: int, n_bands: int) -> int:
    """Bytes of the set-up's temporaries on ``n_in_flight`` galaxies at once.

    β (the PSFs' spectral norms: four float64 spectra a galaxy), two float64 stamps, and
    the initial :func:`sparse_weights` (J + 1 spectra a galaxy; ``n_bands`` 0 in low rank).
    """
    return n_in_flight * (4 * spectrum * 8 + 2 * n_pixels * 8 + (n_bands + 1) * spectrum * 8)

