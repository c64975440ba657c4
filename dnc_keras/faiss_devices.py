"""Where faiss runs: on every GPU faiss reports, else on the CPU.

faiss-gpu (installed in place of faiss-cpu: see the `gpu` extra in pyproject.toml) reports its
GPUs through `faiss.get_num_gpus()`; exact search indexes are then cloned onto all of them and
k-means trains on them. faiss-cpu reports none and nothing changes. No machine this project
is measured on has a GPU: the tests fake the GPU count and faiss's cloner on the CPU build to
check that the GPU route is taken and computes the same thing; its speed is unmeasured.
"""

from __future__ import annotations

import faiss

# Largest k a GPU index searches (faiss's GPU k-selection limit); deeper searches stay on the CPU.
GPU_MAX_K = 2048


def num_gpus():
    """GPUs faiss can use (0 with faiss-cpu, or a faiss without GPU support)."""
    count = getattr(faiss, "get_num_gpus", None)
    return int(count()) if count is not None else 0


def flat_l2(dim, max_k=None):
    """An exact squared-L2 index [dim]: on all GPUs when faiss reports any and every search
    asks for at most `GPU_MAX_K` neighbours, else on the CPU."""
    index = faiss.IndexFlatL2(int(dim))
    gpus = num_gpus()
    if gpus and (max_k is None or max_k <= GPU_MAX_K):
        return faiss.index_cpu_to_all_gpus(index, ngpu=gpus)
    return index


def kmeans_device_options():
    """Keyword arguments of `faiss.Kmeans` that train on all GPUs when faiss reports any."""
    gpus = num_gpus()
    return {"gpu": gpus} if gpus else {}
