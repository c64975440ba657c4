import keras
import numpy as np

from dnc_keras import backbones


def test_caffe_preprocess_matches_keras_applications():
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 7, 3)).astype("float32")
    expected = keras.applications.resnet50.preprocess_input(x.copy())
    got = backbones.CaffePreprocess()(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, atol=1e-4)


def test_resnet50_encoder_saves_and_loads(tmp_path):
    """A run's model.keras must load again for `dnc-keras evaluate` and export."""
    encoder = backbones.build_encoder(backbones.resnet50((32, 32, 3), weights=None),
                                      embedding_dim=8)
    x = np.random.default_rng(1).random((2, 32, 32, 3)).astype("float32")
    path = tmp_path / "encoder.keras"
    encoder.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(encoder(x), loaded(x)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                                   atol=1e-5)
