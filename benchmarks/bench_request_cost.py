"""What one request costs: CPU seconds and memory, per runtime, for requests up to the bounds.

    python benchmarks/bench_request_cost.py            # -> benchmarks/results/request_cost.json
    python benchmarks/bench_request_cost.py --export saved_models/glyphs --out glyphs_cost
    python benchmarks/bench_request_cost.py --tiny     # seconds; the test suite's mode

The export: by default the folder dataset's model (Conv-4, RGB 64 x 64, d = 128), untrained (a
request's cost does not depend on the weights), exported by `export_model` with the default
bounds (`BOUNDS_DEFAULTS`, dnc_keras_cli/options.py); `--export` measures another. Paths:
`serving_default` (uint8 arrays) and `serving_bytes` (PNG and JPEG files) called on the loaded
SavedModel as TF Serving calls them, ONNX Runtime through `ExportedModel(runtime="onnx")`
(uint8 arrays, checked first), and serving/edge_infer.py's `EdgeModel` on PNG files (Pillow's
decoding, then ONNX Runtime). One more path reads one file through the loaders' decoder
(`preprocessing.read_file`) at `FILE_LIMITS`, the limits of a file read outside a request.

Requests: a few batch x size combinations, and three at the bounds: one image of max_side x
(max_pixels // max_side), max_batch images that hold max_pixels together, and max_batch images
of the model's input size. Images are photograph-like (smooth random structure and grain).
Beyond the bounds, on `serving_bytes`: the issue's request (32 flat PNGs of 4096 x 4096 in a few
KB each; 14 s of CPU and +700 MB before the bounds), whose refusal is measured.

Each request runs in a fresh process, after a small warm-up request of the same kind: CPU
seconds (user + system, every thread), wall seconds, the rise of peak RSS during the request
(VmHWM reset first) and the request's own bytes; `memory_mib` is their sum, what the process
holds for the request. Repeated `--repeats` times (2 by default: every repeat is a fresh
process that imports TensorFlow and loads the export, about 15 s each on 2 shared cores, so 3
repeats of the 32 requests would take over half an hour): the maxima are checked against the
targets (2 s of CPU, 500 MB) at the bounds. docs/reliability.md shows the figures.
`--tiny`: the export given (or a tiny one), one small request per path, in one process.
"""

import argparse
import io
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

PATHS = ("serving_default", "serving_bytes_png", "serving_bytes_jpeg", "onnx", "edge_png")
TARGET_CPU_S = 2.0
TARGET_MEMORY_MIB = 500 * 1e6 / 2 ** 20  # 500 MB
GRID = ((1, 1024, 1024), (8, 1024, 768), (1, 2048, 2048))
TINY_GRID = ((2, 40, 30),)
# Beyond the bounds, on serving_bytes (TF Serving's path for files): the request, 32
# PNGs of 4096 x 4096 in 2 MB (14 s of CPU and +700 MB before the bounds), now refused from the
# headers. Flat images, as small as the files. `--tiny`: one file a pixel too wide.
BEYOND = ("beyond: the issue's 32 PNGs of 4096x4096", 32, 4096, 4096)
BEYOND_PATHS = ("serving_bytes_png",)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", help="an export folder DIR/NAME to measure (default: build "
                        "the folder dataset's Conv-4 with the default bounds)")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per request "
                        "(default 2: each starts TensorFlow, so a full run of 3 would take "
                        "half an hour on 2 cores)")
    parser.add_argument("--paths", nargs="+", choices=PATHS + ("loader",),
                        default=list(PATHS) + ["loader"])
    common.add_out_argument(parser, "request_cost.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = common.resolve_out(args.out, "request_cost.json", args.tiny)
    return args


# -- the requests ------------------------------------------------------------------------------

def photo(height, width, channels, seed=0):
    """uint8 [h, w, channels]: smooth random structure plus grain, like a photograph."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 32), max(2, width // 32), 3), np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    grain = rng.integers(-6, 7, image.shape, dtype=np.int16)
    image = np.clip(image + grain, 0, 255).astype(np.uint8)
    if channels == 1:
        image = np.asarray(Image.fromarray(image).convert("L"))[..., None]
    return image


def encode(image, fmt):
    from PIL import Image

    buffer = io.BytesIO()
    array = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(array).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def requests(bounds, input_size, tiny, path=None):
    """[(case, batch, height, width)]: the grid, then the requests at the bounds, then (on
    BEYOND_PATHS) the request beyond them."""
    side, batch, pixels = bounds["max_side"], bounds["max_batch"], bounds["max_pixels"]
    beyond = ([BEYOND if not tiny else ("beyond: one file wider than max_side", 1, 8,
                                        side + 1)] if path in BEYOND_PATHS else [])
    if tiny:
        return [("grid", *size) for size in TINY_GRID] + beyond
    out = [("grid", b, h, w) for b, h, w in GRID if b * h * w <= pixels and max(h, w) <= side]
    one = min(side, pixels // side)
    out.append(("bound: one image of max pixels", 1, side, one))
    each = math.isqrt(pixels // batch)
    out.append(("bound: max_batch images of max pixels", batch, each, each))
    out.append(("bound: max_batch images of the input size", batch, *input_size))
    return out + beyond


def write_request(folder, path, batch, height, width, channels, flat=False):
    """Files of one request in `folder`: request.npy (uint8) or image files; `flat`: one grey
    level (a file of a few KB, however large it declares itself)."""
    import numpy as np

    image = (np.full((height, width, channels), 128, np.uint8) if flat else
             photo(height, width, channels))
    if path in ("serving_default", "onnx"):
        np.save(os.path.join(folder, "request.npy"), np.repeat(image[None], batch, 0))
        return
    fmt = "JPEG" if path.endswith("jpeg") else "PNG"
    data = encode(image, fmt)
    for i in range(batch):
        with open(os.path.join(folder, f"{i:04d}.{fmt.lower()}"), "wb") as f:
            f.write(data)


# -- one request, in a fresh process -----------------------------------------------------------

def _cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(spec):
    """Runs in the child: for each job, a warm-up, then each of its requests; prints one JSON
    line per request."""
    import numpy as np

    spec = json.loads(spec)
    for job in spec["jobs"]:
        path = job["path"]
        runner = _runner(path, spec["export"])
        for request in job["requests"]:
            folder = request["folder"]
            files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
            if path in ("serving_default", "onnx"):
                payload = np.load(files[0])
                size = payload.nbytes
            elif path in ("edge_png", "loader"):
                payload, size = files, 0  # read and decoded inside the request
            else:
                payload = []
                for name in files:
                    with open(name, "rb") as f:
                        payload.append(f.read())
                size = sum(len(p) for p in payload)
            runner(payload, warmup=True)
            before = common.current_rss_mib()
            common.reset_peak_rss()
            cpu, start = _cpu(), time.perf_counter()
            refused = None
            try:
                out = runner(payload)
            except Exception as error:  # noqa: BLE001 - only a request beyond the bounds
                if not request["case"].startswith("beyond"):
                    raise
                from dnc_keras.preprocessing import error_reason

                out, refused = None, error_reason(error).splitlines()[0]
            cpu, wall = _cpu() - cpu, time.perf_counter() - start
            rise = common.current_peak_rss_mib() - before
            print(json.dumps({**request, "path": path, "cpu_s": cpu, "wall_s": wall,
                              "rise_mib": rise, "request_mib": size / 2 ** 20,
                              "memory_mib": rise + size / 2 ** 20, "rss_before_mib": before,
                              "output": None if out is None else list(np.shape(out)),
                              "refused": refused}), flush=True)


def _runner(path, export):
    """callable(payload, warmup=False) running one request on `path`; with warmup, a small
    request of the same kind (tracing, thread pools, arenas)."""
    import numpy as np

    if path == "edge_png":
        sys.path.insert(0, os.path.join(common.REPO, "serving"))
        import edge_infer

        model = edge_infer.EdgeModel(os.path.join(export, _onnx_name(export)))
        small = os.path.join(tempfile.mkdtemp(), "small.png")
        with open(small, "wb") as f:
            f.write(encode(photo(16, 16, model.channels), "PNG"))
        return lambda files, warmup=False: model.embed_files([small] if warmup else files)
    if path == "loader":
        from dnc_keras import preprocessing as pp
        from dnc_keras.export import read_manifest

        record = pp.Preprocessing.from_dict(read_manifest(export)["preprocessing"])
        small = os.path.join(tempfile.mkdtemp(), "small.png")
        with open(small, "wb") as f:
            f.write(encode(photo(16, 16, record.channels), "PNG"))
        return lambda files, warmup=False: pp.read_file(small if warmup else files[0], record)
    import tensorflow as tf

    from dnc_keras.export import ExportedModel
    from dnc_keras.export import signatures as sig

    model = ExportedModel(export, runtime="onnx" if path == "onnx" else "savedmodel")
    small = photo(16, 16, model.channels)[None]
    if path == "onnx":
        return lambda images, warmup=False: model.embed(small if warmup else images,
                                                        batch_size=len(images))
    if path == "serving_default":
        serve = model._loaded.signatures[sig.DEFAULT_SIGNATURE]
        return lambda images, warmup=False: serve(**{sig.IMAGES_KEY: tf.constant(
            small if warmup else images)})[sig.OUTPUT_KEY].numpy()
    serve = model._loaded.signatures[sig.BYTES_SIGNATURE]
    fmt = "JPEG" if path.endswith("jpeg") else "PNG"
    warm = [encode(small[0], fmt)]
    return lambda files, warmup=False: serve(**{sig.BYTES_KEY: tf.constant(
        warm if warmup else files)})[sig.OUTPUT_KEY].numpy()


def _onnx_name(export):
    with open(os.path.join(export, "manifest.json")) as f:
        return json.load(f)["onnx"]["path"]


def run_children(specs, env):
    """Runs one child per spec; returns the rows they print."""
    rows = []
    for spec in specs:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                               json.dumps(spec)], env=env, capture_output=True, text=True,
                              cwd=tempfile.gettempdir())
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"a child failed ({proc.returncode}): "
                             f"{[job['path'] for job in spec['jobs']]}")
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                rows.append(row)
                print(f"{row['path']:<19s} {row['case']:<44s} {row['batch']:>4d} x "
                      f"{row['height']}x{row['width']}: {row['cpu_s']:.2f} s CPU, "
                      f"{row['memory_mib']:.0f} MiB"
                      + (f" (refused: {row['refused'][:80]})" if row.get("refused") else ""),
                      flush=True)
    return rows


# -- the export --------------------------------------------------------------------------------

def build_export(folder, size=64):
    """The folder dataset's model (Conv-4, RGB size x size, d = 128), untrained, exported with
    the default bounds; returns the export folder."""
    import keras

    import dnc_keras
    from dnc_keras.backbones import build_encoder, conv4
    from dnc_keras.datasets.folder import preprocessing
    from dnc_keras.export import export_model

    record = preprocessing(size, "rgb")
    keras.utils.set_random_seed(0)
    encoder = build_encoder(conv4(record.shape), embedding_dim=128, freeze_bn_stats=False)
    model = dnc_keras.DnCModel(encoder, dnc_keras.SubspaceMasks(128, max_learners=4),
                               preprocessing=record)
    model(keras.ops.zeros((1, *record.shape)))
    export_dir = os.path.join(folder, "photos")
    export_model(model, export_dir, record, name="photos")
    return export_dir


def summarise(rows, bounds):
    """Per path: the worst CPU and memory over the requests at the bounds, and the targets."""
    out = {}
    for path in sorted({r["path"] for r in rows}):
        at = [r for r in rows if r["path"] == path and r["case"].startswith("bound")]
        if not at:
            continue
        worst_cpu = max(at, key=lambda r: r["cpu_s"])
        worst_memory = max(at, key=lambda r: r["memory_mib"])
        out[path] = {"cpu_s": round(worst_cpu["cpu_s"], 3), "cpu_case": worst_cpu["case"],
                     "memory_mib": round(worst_memory["memory_mib"], 1),
                     "memory_case": worst_memory["case"],
                     "within_targets": (worst_cpu["cpu_s"] <= TARGET_CPU_S and
                                        worst_memory["memory_mib"] <= TARGET_MEMORY_MIB)}
    return out


def aggregate(rows):
    """One row per (path, case, batch, height, width): medians and maxima of the repeats."""
    groups = {}
    for row in rows:
        key = (row["path"], row["case"], row["batch"], row["height"], row["width"])
        groups.setdefault(key, []).append(row)
    out = []
    for (path, case, batch, height, width), group in groups.items():
        entry = {"path": path, "case": case, "batch": batch, "height": height, "width": width,
                 "pixels": batch * height * width, "repeats": len(group),
                 "request_mib": round(group[0]["request_mib"], 2),
                 "refused": group[0].get("refused")}
        for key in ("cpu_s", "wall_s", "rise_mib", "memory_mib"):
            values = [r[key] for r in group]
            entry[key] = round(max(values), 3)
            entry[f"{key}_median"] = round(statistics.median(values), 3)
        out.append(entry)
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args.child)
    from dnc_keras_cli.options import FILE_LIMITS

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore",
               CUDA_VISIBLE_DEVICES="")
    work = tempfile.mkdtemp(prefix="request_cost-")
    try:
        export = args.export or build_export(work, size=8 if args.tiny else 64)
        with open(os.path.join(export, "manifest.json")) as f:
            manifest = json.load(f)
        bounds, record = manifest["bounds"], manifest["preprocessing"]
        jobs, count = [], 0
        for path in args.paths:
            if path == "loader":
                side = FILE_LIMITS["max_side"]
                cases = ([("grid", 1, 40, 30)] if args.tiny else
                         [("file limits: one file of max pixels", 1,
                           FILE_LIMITS["max_pixels"] // side, side)])
            else:
                cases = requests(bounds, record["size"], args.tiny, path)
            requests_of_path = []
            for case, batch, height, width in cases:
                count += 1
                folder = os.path.join(work, f"request{count}")
                os.makedirs(folder)
                write_request(folder, "edge_png" if path == "loader" else path, 1 if
                              path == "loader" else batch, height, width, record["channels"],
                              flat=case.startswith("beyond"))
                requests_of_path.append({"case": case, "batch": batch, "height": height,
                                         "width": width, "folder": folder})
            jobs.append({"path": path, "requests": requests_of_path})
        if args.tiny:  # every path in one process: the figures mean nothing anyway
            specs = [{"export": export, "jobs": jobs}]
        else:
            specs = [{"export": export, "jobs": [{"path": job["path"], "requests": [r]}]}
                     for job in jobs for r in job["requests"] for _ in range(args.repeats)]
        rows = run_children(specs, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        row.pop("folder", None)
    results = {"export": {"dir": os.path.abspath(export) if args.export else
                          "built: folder dataset's Conv-4, RGB 64x64, d = 128, untrained",
                          "name": manifest["name"], "input": record["size"],
                          "channels": record["channels"], "parameters":
                          manifest["model"].get("parameters")},
               "bounds": bounds, "file_limits": FILE_LIMITS,
               "targets": {"cpu_s": TARGET_CPU_S, "memory_mib": round(TARGET_MEMORY_MIB, 1)},
               "repeats": 1 if args.tiny else args.repeats,
               "requests": aggregate(rows), "at_bounds": summarise(rows, bounds)}
    # None when no request at the bounds was measured (--tiny): nothing is claimed then.
    results["within_targets"] = (all(v["within_targets"] for v in results["at_bounds"].values())
                                 if results["at_bounds"] else None)
    return common.write_results(results, args.out, argv, __file__, name="request_cost")


if __name__ == "__main__":
    main()
