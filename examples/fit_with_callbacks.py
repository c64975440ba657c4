"""Divide and conquer with model.fit: the glyphs dataset, a Conv-4, K = 4 learners.

    python examples/fit_with_callbacks.py [--epochs 10] [--steps-per-epoch N]

The sampler draws one cluster's P x M batch per step; the callbacks divide K = 1 -> 2 -> 4 by
2-means every 2 epochs, re-cluster with k-means after that, and conquer (train the full
embedding) for the last 20% of the epochs.
"""

import argparse

import keras

import dnc_keras
from dnc_keras import datasets, losses
from dnc_keras.backbones import build_encoder, conv4


def main(epochs=10, learners=4, steps_per_epoch=None):
    data = datasets.load("glyphs", seed=0)  # 205 characters x 16 fonts; half unseen at test

    encoder = build_encoder(conv4(data.x_train.shape[1:]), embedding_dim=128,
                            freeze_bn_stats=False)
    model = dnc_keras.DnCModel(
        encoder, dnc_keras.SubspaceMasks(128, max_learners=learners, initial_learners=1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.TripletHardLoss())

    # An epoch is one pass over the training images (N // (P x M) steps) unless given.
    sampler = dnc_keras.ClusterBatchSampler(data.y_train, classes_per_batch=20,
                                            samples_per_class=4, steps_per_epoch=steps_per_epoch)
    # The schedule: K from the masks (1 now, `learners` at the end), divide every 2 epochs,
    # conquer the last fifth; one callback executes it.
    callbacks = dnc_keras.dnc_callbacks(sampler, data.x_train, period=2,
                                        conquer_epoch=epochs - max(1, epochs // 5))
    callbacks.append(dnc_keras.RetrievalEvaluation(data.x_test, data.y_test, every=epochs))
    history = model.fit(sampler.as_dataset(data.x_train), epochs=epochs, callbacks=callbacks)

    embeddings = model.predict(data.x_test)  # L2-normalised, [N, 128]
    metrics = dnc_keras.retrieval_metrics(embeddings, data.y_test)
    print({name: round(value, 3) for name, value in metrics.items()})
    return model, sampler, history, metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--learners", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="batches per epoch (default: one pass, N // (P x M))")
    args = parser.parse_args()
    main(args.epochs, args.learners, args.steps_per_epoch)
