"""PNG plots of a run: training curves and a 2-D map of the test embeddings."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def training_curves(history, path):
    """One panel per logged quantity (loss, overlap, validation metrics) against the epoch."""
    names = [k for k, v in history.items() if len(v)]
    if not names:
        return
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        ax.plot(np.arange(1, len(history[name]) + 1), history[name], marker="o")
        ax.set_title(name)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def embedding_2d(embeddings, labels, path, max_classes=20, max_points=600, seed=0):
    """t-SNE of the test embeddings of up to `max_classes` classes, coloured by class.

    At most `max_points` points: t-SNE's cost grows fast and a few hundred show the structure.
    """
    from sklearn.manifold import TSNE

    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    shown = rng.choice(classes, size=min(max_classes, len(classes)), replace=False)
    keep = np.flatnonzero(np.isin(labels, shown))
    if len(keep) > max_points:
        keep = np.sort(rng.choice(keep, size=max_points, replace=False))
    points = TSNE(n_components=2, init="pca", random_state=seed,
                  perplexity=min(30.0, max(2.0, len(keep) / 4))).fit_transform(embeddings[keep])
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(points[:, 0], points[:, 1], c=labels[keep], cmap="tab20", s=12)
    ax.set_title(f"t-SNE of test embeddings ({len(shown)} unseen classes)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
