"""16-bit PNGs read the same in training, at the edge and in serving: the folder loader (the
graph decoder), Pillow's decoding in serving/image_input.py, `serving_bytes` in the SavedModel,
the graph decoder before ONNX Runtime and edge_infer.py give the same pixels, hence the same
embeddings. Samples span the whole 16-bit range, where clipping to 255 (Pillow's own
conversion of 16-bit grey) would differ from keeping the high byte (the record's rule)."""

import numpy as np

from dnc_keras import preprocessing as pp
from dnc_keras.datasets import load_folder
from dnc_keras.export import ExportedModel

import image_corpus


def sixteen_bit_files(folder, rng):
    """folder/<class>/<i>.png: 16-bit grey and RGB PNGs over the full range of values."""
    paths = []
    for c in range(2):
        (folder / f"class{c}").mkdir(parents=True)
        for i, shape in enumerate([(21, 17), (19, 23, 3)]):
            path = folder / f"class{c}" / f"{i}.png"
            path.write_bytes(image_corpus.png16(rng.integers(0, 65536, shape)))
            paths.append(str(path))
    return paths


def test_sixteen_bit_pngs_read_alike_in_training_edge_and_serving(tmp_path, keras_model,
                                                                  export_dir, serving_modules):
    image_input = serving_modules["image_input"]
    record = keras_model.preprocessing
    paths = sixteen_bit_files(tmp_path / "data", np.random.default_rng(0))

    # The high byte, not Pillow's clipped conversion: an independent reading of the samples.
    raw = np.random.default_rng(0).integers(0, 65536, (21, 17))
    assert np.array_equal(image_input.decode_image(open(paths[0], "rb").read(), 1)[..., 0],
                          (raw >> 8).astype(np.uint8))

    # Training: what the folder loader feeds the model, against Pillow's pixels transformed.
    loaded = load_folder(tmp_path / "data", image_size=record.size, color_mode="grayscale",
                         train_classes="all")
    loaded_pixels = {p: x for p, x in zip(loaded.train_sources, loaded.x_train)}
    for path in paths:
        pixels = image_input.decode_image(open(path, "rb").read(), 1)
        expected = pp.transform(pixels[None], loaded.preprocessing).numpy()[0]
        np.testing.assert_allclose(loaded_pixels[path], expected, atol=1e-6)

    # Serving and the edge: every runtime's embeddings of the files against the run's.
    reference = keras_model.embed(np.stack([pp.read_file(p, record) for p in paths]))
    found = {runtime: ExportedModel(export_dir, runtime=runtime).embed_files(paths)
             for runtime in ("savedmodel", "onnx")}
    edge = serving_modules["edge_infer"].EdgeModel(f"{export_dir}/digits.onnx")
    found["edge"] = edge.embed_files(paths)
    for name, embeddings in found.items():
        assert np.abs(embeddings - reference).max() < 1e-5, name
