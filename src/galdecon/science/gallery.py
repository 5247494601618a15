r"""The gallery of a run: observed | PSF | deconvolved | residual, for a few galaxies.

One row per galaxy, titled with its index in the input stack. The residual is
:math:`Y_i - h_i \circledast X_i`: the estimate convolved again with its PSF by the
solver's own operator (:class:`~galdecon.core.operators.convolution.Convolution`, same
boundary), so the panel shows what the model leaves unexplained — structure there is
signal the deconvolution missed or invented, noise alone is a good fit.

Scales, per row: the observed stamp and the estimate each have their own linear scale
and colour bar (deconvolution concentrates the flux, so the estimate's peak is several
times the observed one and a shared scale would flatten the observed stamp); the
PSF is on a logarithmic scale (down to 10⁻⁴ of its peak, to show its wings); the
residual is shown in units of the noise σ when it is known (a good fit is ~±1σ
everywhere), on a diverging colour map symmetric about zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from galdecon.core.operators.convolution import Convolution
from galdecon.science.figures import pyplot, save

#: Galaxies in a gallery by default, and at most (beyond that the rows are unreadable).
DEFAULT_COUNT = 5
MAX_COUNT = 16
COLUMNS = ("observed", "PSF", "deconvolved", "residual")


def pick_galaxies(n: int, count: int = DEFAULT_COUNT) -> list[int]:
    """Galaxies spread evenly over a stack of ``n``: the first, the last, and between.

    Deterministic and chosen from ``n`` alone, so a gallery of a stack of 100,000 stamps
    reads only the few it shows (ranking by brightness or residual would read them all),
    and ``galdecon show`` picks the same galaxies the run did.

    Examples
    --------
    >>> pick_galaxies(100)
    [0, 25, 50, 74, 99]
    """
    count = max(1, min(int(count), int(n)))
    return sorted({int(i) for i in np.linspace(0, n - 1, count).round()})


def reconvolve(estimate: np.ndarray, psfs: np.ndarray, boundary: str = "periodic"
               ) -> np.ndarray:
    r"""Return :math:`H X`: each estimated stamp convolved with its PSF (float64).

    ``psfs`` is one PSF per stamp ``(k, k0, k1)`` or one shared ``(k0, k1)``.
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    return Convolution(psfs, estimate.shape[-2:], boundary=boundary).op(estimate)


def _panel(fig, ax, image, title: str, cmap: str, limits, label: str | None = None,
           log: bool = False):
    """One stamp with its colour bar (origin at the bottom left, as in a FITS viewer)."""
    import matplotlib
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.ticker import MaxNLocator

    colours = matplotlib.colormaps[cmap]
    if log:  # pixels at or below the floor (noise, negative values) take the lowest colour
        colours = colours.with_extremes(under=colours(0.0), bad=colours(0.0))
    norm = (LogNorm if log else Normalize)(vmin=limits[0], vmax=limits[1], clip=False)
    shown = ax.imshow(image, origin="lower", cmap=colours, norm=norm, interpolation="nearest")
    # A bar in an inset beside the panel: the grid keeps its fixed layout (tight_layout on
    # 40 axes would triple the time of a figure every run draws).
    bar = fig.colorbar(shown, cax=ax.inset_axes([1.03, 0.0, 0.06, 1.0]))
    if not log:  # a log bar keeps its decades
        bar.locator = MaxNLocator(5)
        bar.update_ticks()
    bar.ax.tick_params(labelsize=6)
    if label:
        bar.set_label(label, fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _limits(image) -> tuple[float, float]:
    """A linear scale from the stamp's minimum (or 0) to its maximum, never empty."""
    low, high = min(0.0, float(np.min(image))), float(np.max(image))
    return (low, high) if high > low else (low, low + 1.0)


def gallery_figure(observed, psfs, estimate, indices, residual=None,
                   boundary: str = "periodic", sigma: float | None = None,
                   title: str | None = None):
    r"""The gallery as a matplotlib Figure (see the module docstring for the panels).

    Parameters
    ----------
    observed, estimate : ndarray, shape (k, N0, N1)
        The observed stamps and their deconvolution, of the galaxies shown.
    psfs : ndarray, shape (k, k0, k1) or (k0, k1)
        Their PSFs (or one shared PSF).
    indices : sequence of int
        The galaxies' indices in the input stack (the row titles).
    residual : ndarray, shape (k, N0, N1), optional
        Default: ``observed - reconvolve(estimate, psfs, boundary)``.
    boundary : {'periodic', 'zero'}
        The run's convolution boundary (for the default residual).
    sigma : float, optional
        The noise standard deviation: the residual is then shown in units of σ.
    title : str, optional
        The figure's title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    observed = np.asarray(observed, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    psfs = np.asarray(psfs, dtype=np.float64)
    indices = [int(i) for i in indices]
    if not (observed.ndim == 3 and estimate.shape == observed.shape
            and len(indices) == len(observed) and psfs.ndim in (2, 3)):
        raise ValueError(f"gallery of {len(indices)} galaxies: observed {observed.shape}, "
                         f"estimate {estimate.shape}, PSFs {psfs.shape}; expected (k, N0, "
                         "N1) twice and (k, k0, k1) or (k0, k1)")
    if residual is None:
        residual = observed - reconvolve(estimate, psfs, boundary)
    scale = float(sigma) if sigma and np.isfinite(sigma) and sigma > 0 else 1.0
    residual = np.asarray(residual, dtype=np.float64) / scale
    unit = "σ" if scale != 1.0 else None
    rows = len(indices)
    fig, axes = pyplot().subplots(rows, len(COLUMNS), figsize=(10.0, 2.35 * rows + 0.5),
                                  dpi=100, squeeze=False)
    for row, index in enumerate(indices):
        psf = psfs if psfs.ndim == 2 else psfs[row]
        ax = axes[row]
        _panel(fig, ax[0], observed[row], f"galaxy {index}: observed", "viridis",
               _limits(observed[row]))
        # The PSF on a log scale, 10^-4 of its peak and up: its wings, not only its core.
        peak = float(np.max(psf)) if np.max(psf) > 0 else 1.0
        _panel(fig, ax[1], psf, f"galaxy {index}: PSF (log scale)", "magma",
               (peak * 1e-4, peak), log=True)
        _panel(fig, ax[2], estimate[row], f"galaxy {index}: deconvolved", "viridis",
               _limits(estimate[row]))
        bound = float(np.max(np.abs(residual[row]))) or 1.0
        rms = float(np.sqrt(np.mean(residual[row] ** 2)))
        what = f"rms {rms:.2f}σ" if unit else f"rms {rms:.3g}"
        _panel(fig, ax[3], residual[row], f"galaxy {index}: residual ({what})", "RdBu_r",
               (-bound, bound), label=unit)
    fig.subplots_adjust(left=0.01, right=0.93, bottom=0.01, top=1 - 0.5 / (2.35 * rows + 0.5),
                        wspace=0.45, hspace=0.22)
    fig.suptitle(title or "observed | PSF | deconvolved | residual = observed − PSF ⊛ "
                 "deconvolved", fontsize=9)
    return fig


def gallery(observed, psfs, estimate, indices, path: Path, residual=None,
            boundary: str = "periodic", sigma: float | None = None,
            title: str | None = None) -> Path:
    """Write the gallery (:func:`gallery_figure`) as a PNG, atomically; return its path."""
    return save(gallery_figure(observed, psfs, estimate, indices, residual=residual,
                               boundary=boundary, sigma=sigma, title=title), path,
                tight=False)
