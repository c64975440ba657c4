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


def neighbour_grid(images, labels, embeddings, path, queries=8, k=5, seed=0):
    """Test queries (left column) and their k nearest test items, nearest first; a neighbour of
    another class is framed red, one of the query's class green. The queries are the worst
    first: those with the fewest class-mates among their k neighbours (ties drawn at random).

    Returns:
        (query rows [queries], neighbour rows [queries, k]) as drawn.
    """
    from dnc_keras.evaluation import nearest_neighbours

    labels = np.asarray(labels)
    neighbours = nearest_neighbours(embeddings, k)
    hits = (labels[neighbours] == labels[:, None]).sum(axis=1)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(labels)), hits))[:queries]
    fig, axes = plt.subplots(len(order), k + 1, figsize=(1.3 * (k + 1), 1.3 * len(order)),
                             squeeze=False)
    for row, query in enumerate(order):
        cells = [(query, None)] + [(j, labels[j] == labels[query]) for j in neighbours[query]]
        for ax, (item, same) in zip(axes[row], cells):
            _show(ax, images[item])
            if same is not None:
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_color("tab:green" if same else "tab:red")
                    spine.set_linewidth(3)
        axes[row, 0].set_ylabel(str(labels[query]), fontsize=7)
    axes[0, 0].set_title("query", fontsize=8)
    for j in range(1, k + 1):
        axes[0, j].set_title(f"#{j}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return order, neighbours[order]


def _show(ax, image):
    image = np.asarray(image, np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    ax.imshow(np.clip(image, 0, 1), cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def class_recall(recall, path, worst=30):
    """Recall@1 of the `worst` classes, worst first, against the mean over all classes."""
    items = sorted(recall.items(), key=lambda item: (item[1], str(item[0])))[:worst]
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(items) + 1.2))
    ax.barh(np.arange(len(items)), [v for _, v in items], color="tab:orange")
    ax.set_yticks(np.arange(len(items)), [str(c) for c, _ in items], fontsize=7)
    ax.invert_yaxis()
    mean = float(np.mean(list(recall.values())))
    ax.axvline(mean, color="black", linestyle="--", label=f"mean of {len(recall)} classes")
    ax.set_xlim(0, 1)
    ax.set_xlabel("Recall@1")
    ax.set_title(f"the {len(items)} classes with the lowest Recall@1")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def clusters(actions, path):
    """Images and classes per cluster after each clustering, division and re-clustering."""
    rows = [a for a in actions if a.get("cluster_sizes")]
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, title in ((axes[0], "cluster_sizes", "images per cluster"),
                           (axes[1], "cluster_classes", "classes per cluster")):
        for a in rows:
            values = a.get(key) or []
            ax.scatter([a["epoch"]] * len(values), values, s=12, color="tab:blue")
        ax.set_xlabel("epoch")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
