"""What a run adds to TensorBoard besides Keras's own logs: the test embeddings in the
projector, and the clusters over the epochs.

`tensorboard --logdir RUN/logs` then shows the test embeddings under "Projector" (PCA, t-SNE or
UMAP, coloured or searched by class, each point drawn as its thumbnail from a sprite sheet), and
under "Scalars" `clusters/images/<k>` and `clusters/classes/<k>`, the size of each cluster after
each clustering, division and re-clustering.
"""

import os

import numpy as np

# TensorBoard's projector reads a sprite sheet of at most 8192 x 8192 pixels.
MAX_SPRITE_SIDE = 8192


def write_projector(log_dir, embeddings, labels, images=None, thumbnail=28):
    """Writes `log_dir/projector/`: the embeddings as a checkpointed variable, one label per row
    (metadata.tsv), the thumbnails (sprite.png) and projector_config.pbtxt.

    Args:
        log_dir: the run's TensorBoard folder.
        embeddings: float array [N, d], what `model.embed` returns.
        labels: class of each row.
        images: float [N, H, W, C] in [0, 1], or None for no thumbnails.
        thumbnail: side of a thumbnail in the sprite sheet. Defaults to `28`.

    Returns:
        the projector folder.
    """
    import tensorflow as tf
    from PIL import Image
    from tensorboard.plugins import projector

    from dnc_keras import files

    folder = os.path.join(log_dir, "projector")
    os.makedirs(folder, exist_ok=True)
    embeddings = np.asarray(embeddings, np.float32)
    files.write_text(os.path.join(folder, "metadata.tsv"),
                     "".join(f"{label}\n" for label in labels))
    checkpoint = tf.train.Checkpoint(embedding=tf.Variable(embeddings, name="embedding"))
    path = checkpoint.save(os.path.join(folder, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    entry.metadata_path = "metadata.tsv"
    if images is not None:
        per_row = int(np.ceil(np.sqrt(len(images))))
        side = min(thumbnail, MAX_SPRITE_SIDE // per_row)
        sheet = sprite_sheet(images, side)
        with files.atomic_path(os.path.join(folder, "sprite.png")) as tmp:
            Image.fromarray(sheet).save(tmp, format="PNG")
        entry.sprite.image_path = "sprite.png"
        entry.sprite.single_image_dim.extend([side, side])
    projector.visualize_embeddings(folder, config)
    return folder, path


def sprite_sheet(images, side):
    """The images as one uint8 sheet, row-major, ceil(sqrt(N)) per row, each resized to
    side x side; grey images become RGB."""
    from PIL import Image

    images = np.clip(np.asarray(images, np.float32), 0, 1)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    per_row = int(np.ceil(np.sqrt(len(images))))
    sheet = np.zeros((per_row * side, per_row * side, 3), np.uint8)
    for i, image in enumerate(images):
        tile = Image.fromarray((image * 255).round().astype(np.uint8)).resize(
            (side, side), Image.Resampling.LANCZOS)
        r, c = divmod(i, per_row)
        sheet[r * side:(r + 1) * side, c * side:(c + 1) * side] = np.asarray(tile)
    return sheet


def write_cluster_scalars(log_dir, actions):
    """`clusters/images/<k>` and `clusters/classes/<k>` at the epoch of each action that left
    clusters (history.json's `dnc_actions`), in `log_dir/clusters`."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(os.path.join(log_dir, "clusters"))
    with writer.as_default():
        for action in actions:
            for kind, key in (("images", "cluster_sizes"), ("classes", "cluster_classes")):
                for k, value in enumerate(action.get(key) or []):
                    tf.summary.scalar(f"clusters/{kind}/{k}", value, step=action["epoch"])
    writer.close()
