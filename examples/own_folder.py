"""Tutorial 1: divide and conquer on your own folder of images, with model.fit.

    python examples/own_folder.py PHOTOS [--epochs 20] [--size 64]

PHOTOS holds one subfolder per class (`PHOTOS/<class>/<image>`, JPEG, PNG, GIF or BMP; at least
2 images per class). The first half of the classes (sorted by name) trains; retrieval is
measured on the other half, classes the model never saw, which is what an image-search or
re-identification model meets in use.

Step by step:
1. Load the folder. The loader resizes every image through a `Preprocessing` record, which the
   model keeps: an export then resizes a served image the same way.
2. Build the network: a small Conv-4 backbone and a 128-d embedding, split among K learners by
   `SubspaceMasks` (one learner at first; division doubles them).
3. The sampler draws each batch from one cluster (P classes x M images); `dnc_callbacks`
   clusters, divides, re-clusters and finally conquers, on the schedule it plans from fit's
   epochs.
4. Fit, then look: Recall@K, MAP@R and NMI of the unseen classes, and which queries go wrong.
"""

import argparse

import keras

import dnc_keras
from dnc_keras import datasets, losses
from dnc_keras.backbones import build_encoder, conv4


def main(folder, epochs=20, size=64, learners=2, out=None):
    # 1. The data: images [N, size, size, 3] in [0, 1], labels, and the record that made them.
    data = datasets.load_folder(folder, image_size=size, on_error="skip")
    print(f"{len(set(data.y_train))} training classes, {len(set(data.y_test))} unseen")

    # 2. The model: backbone -> embedding -> K subspaces, carrying the preprocessing record.
    encoder = build_encoder(conv4(data.x_train.shape[1:]), embedding_dim=128,
                            freeze_bn_stats=False)
    masks = dnc_keras.SubspaceMasks(128, max_learners=learners, initial_learners=1)
    model = dnc_keras.DnCModel(encoder, masks, preprocessing=data.preprocessing)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.TripletHardLoss())

    # 3. The batches and the schedule: divide every 2 epochs, conquer the last fifth.
    sampler = dnc_keras.ClusterBatchSampler(data.y_train, classes_per_batch=8,
                                            samples_per_class=4)
    callbacks = dnc_keras.dnc_callbacks(sampler, data.x_train, period=2,
                                        conquer_epoch=epochs - max(1, epochs // 5))
    history = model.fit(sampler.as_dataset(data.x_train), epochs=epochs, callbacks=callbacks,
                        verbose=2)

    # 4. Retrieval among the unseen classes, and the queries the model gets most wrong.
    embeddings = model.predict(data.x_test, verbose=0)
    metrics = dnc_keras.retrieval_metrics(embeddings, data.y_test)
    print({name: round(value, 3) for name, value in metrics.items()})
    if out:
        from dnc_keras.training import plots

        plots.neighbour_grid(data.x_test, data.y_test, embeddings, f"{out}/neighbours.png")
        model.save(f"{out}/model.keras")  # loads in another process after `import dnc_keras`
    return model, history, metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="one subfolder of images per class")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="side of the model's input")
    parser.add_argument("--learners", type=int, default=2)
    parser.add_argument("--out", default=None, help="folder for the model and the picture")
    args = parser.parse_args()
    main(args.folder, args.epochs, args.size, args.learners, args.out)
