"""In-graph batching: concurrent requests of different image sizes are batched together after
each is resized, and every answer equals the answer to the same request sent alone."""

import threading

import numpy as np
import tensorflow as tf

from dnc_keras.export import signatures as sig


def test_concurrent_mixed_size_requests_batch_correctly(grpc_target, serving_modules, digits,
                                                        encode):
    client_module = serving_modules["grpc_client"]
    images = digits[0]
    requests = []
    for i in range(16):
        h, w = 8 + 3 * i, 30 - i  # every request its own size
        batch = np.stack([tf.image.resize(images[i + k], (h, w), method="nearest").numpy()
                          .astype(np.uint8) for k in range(1 + i % 3)])
        requests.append(batch)
    files = [encode(requests[i][0]) for i in range(16)]
    with client_module.GrpcEmbeddingClient(grpc_target, "digits") as client:
        alone = [client.embed(batch) for batch in requests]
        alone_files = [client.embed_bytes([f]) for f in files]
        together, together_files, errors = [None] * 16, [None] * 16, []
        start = threading.Barrier(32)

        def send(i, as_file):
            try:
                start.wait()
                if as_file:
                    together_files[i] = client.embed_bytes([files[i]])
                else:
                    together[i] = client.embed(requests[i])
            except Exception as error:  # collected and asserted below
                errors.append(error)

        threads = [threading.Thread(target=send, args=(i, f)) for i in range(16)
                   for f in (False, True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors
    for i in range(16):
        assert np.abs(together[i] - alone[i]).max() < 1e-6
        assert np.abs(together_files[i] - alone_files[i]).max() < 1e-6


def test_both_signatures_run_the_network_in_a_batch_function(export_dir):
    import os

    loaded = tf.saved_model.load(os.path.join(export_dir, "1"))
    for name in (sig.DEFAULT_SIGNATURE, sig.BYTES_SIGNATURE):
        library = loaded.signatures[name].graph.as_graph_def().library.function
        assert any(node.op == "BatchFunction" for f in library for node in f.node_def), name
