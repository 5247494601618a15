"""The gallery figure: panels, titles, the residual's model, the PNG read back.

New with issue 11: before it, a run drew only its cost curve (no gallery function).
"""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from galdecon.core.operators.convolution import Convolution
from galdecon.science.figures import pyplot, save
from galdecon.science.gallery import gallery, gallery_figure, pick_galaxies, reconvolve

DATA = Path(__file__).resolve().parents[2] / "data" / "sf_deconvolve_example"


@pytest.fixture(scope="module")
def stamps():
    images = np.load(DATA / "example_image_stack.npy")
    psfs = np.load(DATA / "example_psfs.npy")
    return images[[3, 17, 42]], psfs[[3, 17, 42]]


def test_galaxies_are_spread_over_the_stack_first_and_last_included():
    assert pick_galaxies(100) == [0, 25, 50, 74, 99]
    assert pick_galaxies(100_000, 4) == [0, 33333, 66666, 99999]
    assert pick_galaxies(3) == [0, 1, 2]
    assert pick_galaxies(1) == [0]


def test_reconvolve_is_the_solvers_operator(stamps):
    images, psfs = stamps
    for boundary in ("periodic", "zero"):
        expected = Convolution(psfs, (41, 41), boundary=boundary).op(images)
        np.testing.assert_array_equal(reconvolve(images, psfs, boundary), expected)
    shared = reconvolve(images, psfs[0])
    np.testing.assert_allclose(shared[2], reconvolve(images[2:], psfs[:1])[0], rtol=1e-12)


def test_panels_hold_the_data_with_the_galaxy_indices_in_the_titles(stamps):
    images, psfs = stamps
    estimate = np.clip(images, 0, None) * 1.5
    sigma = 3e-4
    fig = gallery_figure(images, psfs, estimate, [3, 17, 42], sigma=sigma)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == len(fig.axes) == 12  # 3 rows x 4 panels
    assert all(ax.images[0].colorbar is not None and ax.child_axes for ax in panels)
    titles = [ax.get_title() for ax in panels]
    for row, index in enumerate([3, 17, 42]):
        assert titles[4 * row: 4 * row + 3] == [f"galaxy {index}: observed",
                                                f"galaxy {index}: PSF (log scale)",
                                                f"galaxy {index}: deconvolved"]
        assert titles[4 * row + 3].startswith(f"galaxy {index}: residual (rms ")
        shown = [np.asarray(ax.images[0].get_array()) for ax in panels[4 * row: 4 * row + 4]]
        np.testing.assert_array_equal(shown[0], images[row])
        np.testing.assert_array_equal(shown[1], psfs[row])
        np.testing.assert_array_equal(shown[2], estimate[row])
        residual = (images[row] - reconvolve(estimate[row:row + 1], psfs[row:row + 1])[0])
        np.testing.assert_allclose(shown[3], residual / sigma, rtol=1e-12, atol=1e-12)
        low, high = panels[4 * row + 3].images[0].get_clim()
        assert low == -high and high == pytest.approx(np.abs(residual / sigma).max())
        rms = np.sqrt(np.mean((residual / sigma) ** 2))
        assert f"(rms {rms:.2f}σ)" in titles[4 * row + 3]
    pyplot().close(fig)


def test_a_perfect_model_leaves_a_zero_residual(stamps):
    images, psfs = stamps
    truth = np.clip(images, 0, None)
    observed = reconvolve(truth, psfs)
    fig = gallery_figure(observed, psfs, truth, [0, 1, 2])
    residuals = [ax for ax in fig.axes if "residual" in ax.get_title()]
    for ax in residuals:
        assert np.abs(np.asarray(ax.images[0].get_array())).max() < 1e-15
    pyplot().close(fig)


def test_png_is_written_and_every_panel_is_drawn(stamps, tmp_path):
    images, psfs = stamps
    estimate = np.clip(images, 0, None)
    path = gallery(images, psfs, estimate, [3, 17, 42], tmp_path / "g.png", sigma=3e-4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.shape == (int(100 * (2.35 * 3 + 0.5)), 1000, 4)
    # The same figure, laid out, gives each panel's place in the PNG: none is blank.
    fig = gallery_figure(images, psfs, estimate, [3, 17, 42], sigma=3e-4)
    fig.canvas.draw()
    height = pixels.shape[0]
    for ax in (ax for ax in fig.axes if ax.get_title()):
        box = ax.get_window_extent()
        panel = pixels[int(height - box.y1) + 2:int(height - box.y0) - 2,
                       int(box.x0) + 2:int(box.x1) - 2, :3]
        assert panel.size and panel.std() > 0.02, ax.get_title()
    again = save(fig, tmp_path / "again.png", tight=False)
    np.testing.assert_array_equal(imread(again), pixels)  # gallery() is this figure, saved


def test_mismatched_stacks_are_refused(stamps):
    images, psfs = stamps
    with pytest.raises(ValueError, match="gallery of 2 galaxies"):
        gallery_figure(images, psfs, images[:2], [0, 1])
