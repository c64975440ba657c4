"""Which CPU kernels faiss's bundled OpenBLAS runs, chosen before faiss loads.

faiss-cpu 1.15 bundles OpenBLAS 0.3.15, which does not recognise recent Intel CPUs and falls
back to its generic "Prescott" (SSE3) kernels: on this project's Intel Xeon (Sapphire Rapids)
faiss's exact search ran about 3x slower than numpy's matrix product of the same size, and
`retrieval_metrics` took 5x its chunked-matmul bound. OpenBLAS reads `OPENBLAS_CORETYPE` when
it loads; on an Intel CPU this module sets it from the CPU's flags (SkylakeX with AVX-512,
Haswell with AVX2), unless the user set it. Other CPUs keep OpenBLAS's own choice (on the AMD
EPYC this project was also measured on, it already picked fast kernels). Linux only: elsewhere
nothing is read or set.
"""

from __future__ import annotations

import os

CPUINFO = "/proc/cpuinfo"


def coretype(vendor, flags):
    """The OpenBLAS core type to force for a CPU, or None to keep OpenBLAS's detection."""
    if vendor != "GenuineIntel":
        return None
    if "avx512f" in flags and "avx512bw" in flags and "avx512vl" in flags:
        return "SkylakeX"
    if "avx2" in flags and "fma" in flags:
        return "Haswell"
    return None


def read_cpu(path=CPUINFO):
    """(vendor, set of flags) of the first CPU in /proc/cpuinfo, or (None, set())."""
    vendor, flags = None, set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and vendor is None:
                    vendor = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return vendor, flags


def choose(environ=os.environ, path=CPUINFO):
    """Sets OPENBLAS_CORETYPE in `environ` when `coretype` names one and it is unset; returns
    the value in effect (None: OpenBLAS detects)."""
    if "OPENBLAS_CORETYPE" in environ:
        return environ["OPENBLAS_CORETYPE"]
    chosen = coretype(*read_cpu(path))
    if chosen:
        environ["OPENBLAS_CORETYPE"] = chosen
    return chosen
