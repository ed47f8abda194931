"""Figures with one look across the suite: latent scatters, manifold grids, image rows and grids.
Each takes images or a `decode` callable (latent points -> images in [0, 1]) and a path, and
saves one figure atomically (a half-written PNG never replaces a good one).
"""

import pathlib
import statistics
import sys

import matplotlib

matplotlib.use("Agg")  # draw to files; no screen needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from common.outputs import atomic_path  # noqa: E402

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "savefig.bbox": "tight",
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "font.size": 9,
    "image.cmap": "gray",
}


def gaussian_quantiles(n, low=0.05, high=0.95):
    """n points spaced evenly in probability under N(0, 1): dense where the prior is dense."""
    normal = statistics.NormalDist()
    return np.array([normal.inv_cdf(p) for p in np.linspace(low, high, n)], np.float32)


def tile(images, rows, cols, gap=1):
    """Arrange `rows * cols` images (N, H, W[, 1]) into one 2-D mosaic with `gap` pixels between."""
    images = np.asarray(images).reshape(rows, cols, *np.shape(images)[1:3])
    h, w = images.shape[2:]
    mosaic = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap), np.float32)
    for r in range(rows):
        for c in range(cols):
            mosaic[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = images[r, c]
    return mosaic


def plot_latent_scatter(codes, labels, path, title, class_names, name="z_mean", note="",
                        seed=0, max_points=5000):
    """Scatter of codes coloured by class, with a labelled colour bar: 2-D codes as they are,
    wider ones by their first two principal components (of the points shown), 1-D codes by
    `plot_latent_strip`."""
    codes, labels = codes[:max_points], labels[:max_points]
    if codes.shape[1] == 1:
        plot_latent_strip(codes[:, 0], labels, path, title, class_names, name, note, seed)
        return
    if codes.shape[1] == 2 or len(codes) < 2:  # PCA needs two points: one is drawn as it is
        points, axes = codes[:, :2], (f"{name}[0]", f"{name}[1]")
        what = (f"{name} of {len(codes):,} test image{'s' * (len(codes) > 1)}"
                if codes.shape[1] == 2 else
                f"{name}[0] and {name}[1] of {len(codes)} test image (too few for a PCA)")
    else:
        points = PCA(n_components=2, random_state=seed).fit_transform(codes)
        axes = ("principal component 1", "principal component 2")
        what = f"first two principal components of {name}, {len(codes):,} test images"
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(7, 6))
        dots = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", vmin=-0.5,
                          vmax=9.5, s=6, alpha=0.8, linewidths=0)
        bar = fig.colorbar(dots, ax=ax, ticks=range(10))
        bar.ax.set_yticklabels(class_names)
        bar.set_label("class")
        ax.set(title=f"{title}\n{what}{note}", xlabel=axes[0], ylabel=axes[1])
        ax.grid(alpha=0.3)
        save_figure(fig, path)


def plot_latent_strip(values, labels, path, title, class_names, name="z_mean", note="", seed=0):
    """1-D codes: a histogram stacked by class above one strip per class (jittered vertically,
    with a seed), both on the same axis of code values and in the scatter's class colours."""
    colours = plt.get_cmap("tab10")(np.arange(len(class_names)))
    classes = np.arange(len(class_names))
    jitter = np.random.default_rng(seed).uniform(-0.3, 0.3, len(values))
    with plt.style.context(STYLE):
        fig, (top, strip) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, layout="constrained",
                                         gridspec_kw={"height_ratios": (1, 2)})
        top.hist([values[labels == c] for c in classes], bins=np.histogram_bin_edges(values, 40),
                 stacked=True, color=colours, label=class_names)
        top.set(ylabel="test images",
                title=f"{title}\n{name}[0] of {len(values):,} test images, by class{note}")
        strip.scatter(values, labels + jitter, c=colours[labels], s=6, alpha=0.8, linewidths=0)
        strip.set_yticks(classes, class_names)
        for tick, colour in zip(strip.get_yticklabels(), colours):
            tick.set_color(colour)
        strip.set(xlabel=f"{name}[0]", ylabel="class", ylim=(len(classes) - 0.5, -0.5))
        for ax in (top, strip):
            ax.grid(alpha=0.3)
        save_figure(fig, path)


def plot_manifold(decode, path, title, n=20, latent_dim=2):
    """Decode an n x n grid of 2-D latent points at Gaussian quantiles, in one batch, and tile it
    with z[1] growing upwards as on a plot. A 1-D latent space is one row, `plot_manifold_row`."""
    if latent_dim == 1:
        plot_manifold_row(decode, path, title, n)
        return
    values = gaussian_quantiles(n)
    z0, z1 = np.meshgrid(values, values[::-1])
    grid = np.stack([z0.ravel(), z1.ravel()], axis=1)
    images = decode(grid)  # one call for all n * n points
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 8))
        ax.imshow(tile(images, n, n, gap=0), vmin=0, vmax=1)
        step = images.shape[1]
        ticks = np.arange(n) * step + step / 2 - 0.5
        shown = slice(None, None, max(1, n // 5))
        ax.set_xticks(ticks[shown], [f"{v:.2f}" for v in values[shown]])
        ax.set_yticks(ticks[shown], [f"{v:.2f}" for v in values[::-1][shown]])
        ax.set(title=title, xlabel="z[0]", ylabel="z[1]")
        save_figure(fig, path)


def plot_manifold_row(decode, path, title, n=20):
    """Decode n points of a 1-D latent space at Gaussian quantiles, in one batch: one row."""
    values = gaussian_quantiles(n)
    images = decode(values[:, None])
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(n * 0.75, 2.4))
        ax.imshow(tile(images, 1, n), vmin=0, vmax=1)
        step = images.shape[1] + 1
        shown = np.arange(0, n, max(1, n // 5))
        ax.set_xticks(shown * step + step / 2 - 1, [f"{values[i]:.2f}" for i in shown])
        ax.set_yticks([])
        ax.set(title=title, xlabel="z[0]")
        save_figure(fig, path)


def plot_latent_traversals(decode, dims, latent_dim, path, title, n=11, center=None):
    """One row per latent dimension in `dims`: that dimension swept over Gaussian quantiles,
    the others held at `center` (the prior mean by default); every image decoded in one batch."""
    values = gaussian_quantiles(n, 0.02, 0.98)
    center = np.zeros(latent_dim, np.float32) if center is None else center
    z = np.tile(center, (len(dims), n, 1))
    for row, dim in enumerate(dims):
        z[row, :, dim] = values
    images = decode(z.reshape(-1, latent_dim))
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(n * 0.7, len(dims) * 0.75 + 0.8))
        ax.imshow(tile(images, len(dims), n), vmin=0, vmax=1)
        step = images.shape[1] + 1
        ax.set_yticks(np.arange(len(dims)) * step + step / 2 - 1, [f"z[{d}]" for d in dims])
        shown = [0, n // 2, n - 1]
        ax.set_xticks(np.array(shown) * step + step / 2 - 1, [f"{values[i]:+.1f}" for i in shown])
        ax.set(title=title, xlabel="value of the swept dimension (others at 0)")
        save_figure(fig, path)


def plot_image_rows(rows, row_labels, path, title):
    """Rows of images of the same length, e.g. originals above their reconstructions."""
    cols = len(rows[0])
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(cols * 0.6, len(rows) * 0.65 + 0.6))
        ax.imshow(tile(np.concatenate(rows), len(rows), cols), vmin=0, vmax=1)
        step = np.shape(rows[0])[1] + 1
        ax.set_yticks(np.arange(len(rows)) * step + step / 2 - 1, row_labels)
        ax.set_xticks([])
        ax.set_title(title)
        save_figure(fig, path)


def plot_image_grid(images, path, title, cols=10):
    """A grid of images, e.g. samples from a generative model."""
    rows = len(images) // cols
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(cols * 0.6, rows * 0.6 + 0.5))
        ax.imshow(tile(images[:rows * cols], rows, cols), vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(title)
        save_figure(fig, path)


def save_figure(fig, path):
    """Write `fig` as a PNG to `path` (atomically: no half-written figure) and close it; in a
    notebook, also show that PNG under the cell that drew it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    show_in_notebook(path)


def show_in_notebook(path):
    """Show the PNG at `path` inline when running in a Jupyter (IPython) kernel; elsewhere (a
    script, the tests, a terminal IPython) do nothing. IPython is looked for, never imported."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if getattr(shell, "kernel", None) is None:
        return
    from IPython.display import Image, display

    display(Image(data=pathlib.Path(path).read_bytes(), format="png"))
