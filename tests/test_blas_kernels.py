"""OPENBLAS_CORETYPE is chosen from the CPU's vendor and flags, never over the user's choice;
and importing dnc_keras on this machine gives faiss's OpenBLAS the kernels the CPU has."""

import subprocess
import sys

from dnc_keras import blas_kernels

SPR = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512vl amx_tile\n"


def test_coretype_from_vendor_and_flags():
    assert blas_kernels.coretype("GenuineIntel", {"avx2", "fma", "avx512f", "avx512bw",
                                                  "avx512vl"}) == "SkylakeX"
    assert blas_kernels.coretype("GenuineIntel", {"avx2", "fma"}) == "Haswell"
    assert blas_kernels.coretype("GenuineIntel", {"sse2"}) is None
    assert blas_kernels.coretype("AuthenticAMD", {"avx2", "fma", "avx512f", "avx512bw",
                                                  "avx512vl"}) is None


def test_choose_reads_cpuinfo_and_respects_the_user(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\n" + SPR + "\nprocessor\t: 1\n" + SPR)
    env = {}
    assert blas_kernels.choose(env, str(cpuinfo)) == "SkylakeX"
    assert env == {"OPENBLAS_CORETYPE": "SkylakeX"}
    mine = {"OPENBLAS_CORETYPE": "Haswell"}
    assert blas_kernels.choose(mine, str(cpuinfo)) == "Haswell"
    assert mine == {"OPENBLAS_CORETYPE": "Haswell"}
    nothing = {}
    assert blas_kernels.choose(nothing, str(tmp_path / "absent")) is None and nothing == {}


def test_faiss_openblas_runs_the_kernels_chosen_on_import():
    """In a fresh process (OpenBLAS reads the variable once, when it loads): after
    `import dnc_keras`, faiss's OpenBLAS reports the chosen core type, or its own detection
    where nothing was chosen."""
    code = ("import os, dnc_keras, faiss, threadpoolctl\n"
            "arch = [i.get('architecture') for i in threadpoolctl.threadpool_info()\n"
            "        if 'faiss' in i['filepath'] and i['internal_api'] == 'openblas']\n"
            "print(os.environ.get('OPENBLAS_CORETYPE'), arch[0] if arch else None)\n")
    env_free = {k: v for k, v in __import__("os").environ.items() if k != "OPENBLAS_CORETYPE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env_free, "TF_CPP_MIN_LOG_LEVEL": "3"}, check=True).stdout
    chosen, arch = out.split()[-2:]
    expected = blas_kernels.coretype(*blas_kernels.read_cpu())
    assert chosen == str(expected)
    if expected is not None and arch != "None":
        assert arch == expected
