"""Matplotlib figures: ROC curves, score histograms, deviation heatmaps and training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str):
    """curves: label -> (labels, scores)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, lw=1, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(fontsize=7, loc="lower right")
    return fig


def histogram_figure(labels: np.ndarray, scores: Mapping[str, np.ndarray], title: str):
    fig, axes = plt.subplots(1, len(scores), figsize=(4 * len(scores), 3), squeeze=False)
    for ax, (name, s) in zip(axes[0], scores.items()):
        bins = np.linspace(np.percentile(s, 0.5), np.percentile(s, 99.5), 50)
        ax.hist(s[labels == 0], bins=bins, alpha=0.6, density=True, label="normal")
        ax.hist(s[labels == 1], bins=bins, alpha=0.6, density=True, label="anomaly")
        ax.set(title=name, xlabel="score")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def heatmap_figure(
    images: np.ndarray,
    maps: Mapping[int, np.ndarray],
    scores: Sequence[float],
    captions: Sequence[str],
    title: str,
):
    """images: (K, H, W, 3) uint8; maps: scale -> (K, h, w) energy ||D_s||^2 per location."""
    scales = sorted(maps)
    fig, axes = plt.subplots(
        len(images),
        1 + len(scales),
        figsize=(1.9 * (1 + len(scales)), 1.9 * len(images)),
        squeeze=False,
    )
    for i, img in enumerate(images):
        axes[i, 0].imshow(img)
        axes[i, 0].set_title(f"{captions[i]}\nscore {scores[i]:.3g}", fontsize=7)
        for j, s in enumerate(scales, start=1):
            axes[i, j].imshow(maps[s][i], cmap="inferno")
            if i == 0:
                axes[i, j].set_title(f"$\\|D_{s}\\|^2$", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
