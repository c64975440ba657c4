"""Every export and image fault, met the way a user meets it: each command a fresh process.

    python benchmarks/bench_export_faults.py         # -> benchmarks/results/export_faults.json
    python benchmarks/bench_export_faults.py --tiny  # a subset, under a minute (the tests)

Setting up (skipped with `--run` and `--export`): `dnc-keras train` on scikit-learn's digits
(1 epoch, K = 2, d = 16), `dnc-keras export` of it with the default bounds, and
`dnc-keras build-index` of a gallery of its PNG files; each in its own process.

Cases, each with the command that meets it, the outcome expected, the exit code and first error
line observed, and whether they agree:

- image files (corrupt, truncated, zero-byte, text named .png, a 140 KB PNG declaring
  12,000 x 12,000 pixels) through `dnc-keras embed` of the export (SavedModel and ONNX
  Runtime) and of the run, `dnc-keras search`, serving/edge_infer.py, and
  `dnc-keras train --dataset folder` with the file in a class folder: exit 2, one line naming
  the file, never a traceback;
- 16-bit PNGs (grey and RGB): the same embeddings (within the parity tolerance) from the run,
  both runtimes of the export and edge_infer.py, and a folder of them trains;
- tampered exports (absolute and `../` paths, a symlink out of the folder, a changed hash,
  changed ONNX bytes, changed SavedModel variables, max_side lifted in the manifest, a missing
  key, not JSON): `dnc-keras validate-export` exits 2 naming the failed check, and
  edge_infer.py refuses the ONNX ones;
- oversized requests (empty batch, too many images, a side too large, too many pixels, wrong
  channels) through the SavedModel's graph (TF Serving's path), `ExportedModel` on both
  runtimes and edge_infer.py's `EdgeModel`: the same message everywhere; and files beyond the
  bounds through `dnc-keras embed` and edge_infer.py.

`--tiny` runs a subset (marked in the results) against the run and export given.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

EDGE = os.path.join(common.REPO, "serving", "edge_infer.py")
TRAIN_DIGITS = ["--dataset", "digits", "--epochs", "1", "--learners", "2", "--embedding-dim",
                "16", "--classes-per-batch", "4", "--samples-per-class", "4",
                "--steps-per-epoch", "2", "--no-nmi", "--no-plots"]
TRAIN_FOLDER = ["--image-size", "16", "--epochs", "1", "--learners", "1", "--embedding-dim",
                "8", "--classes-per-batch", "2", "--samples-per-class", "2",
                "--steps-per-epoch", "1", "--no-nmi", "--no-plots"]
# TensorFlow's and absl's start-up log lines on stderr, which are not the command's output.
_LOG = re.compile(r"^(WARNING: All log messages|[IWEF]\d{4} |To enable the following|\s|$)")
PARITY = 1e-4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a finished `dnc-keras train` run folder to use")
    parser.add_argument("--export", help="its export folder DIR/NAME (default bounds)")
    parser.add_argument("--workdir", help="keep the files made here (default: a temporary "
                        "folder, removed)")
    common.add_out_argument(parser, "export_faults.json")
    parser.add_argument("--request", nargs=2, metavar=("RUNTIME", "EXPORT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if bool(args.run) != bool(args.export):
        parser.error("--run and --export go together")
    args.out = common.resolve_out(args.out, "export_faults.json", args.tiny)
    return args


# -- the faulty files --------------------------------------------------------------------------

def png_bytes(array):
    """A PNG of a uint8 or uint16 array (grey [h, w] or RGB [h, w, 3]), written by hand so that
    16-bit samples are kept (Pillow writes 16-bit grey only)."""
    import numpy as np

    array = np.asarray(array)
    depth = 16 if array.dtype == np.uint16 else 8
    h, w = array.shape[:2]
    colour = 2 if array.ndim == 3 else 0
    rows = array.reshape(h, -1).astype(">u2" if depth == 16 else "u1")
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth,
                                                                colour, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bomb_png(side=12000):
    """A grey PNG declaring side x side pixels, all zero: about 140 KB for 12,000."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def fault_files(folder, seed=0):
    """{name: path} of the faulty image files, and of 16-bit PNGs (grey, RGB)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    good = png_bytes(rng.integers(0, 256, (24, 20), dtype=np.uint8))
    files = {
        "corrupt": good[:40] + bytes(rng.integers(0, 256, len(good) - 40, dtype=np.uint8)),
        "truncated": good[:len(good) // 2],
        "zero-byte": b"",
        "wrong type": b"name,label\nnot an image,0\n",
        "bomb": bomb_png(),
        "16-bit grey": png_bytes(rng.integers(0, 65536, (21, 17), dtype=np.uint16)),
        "16-bit RGB": png_bytes(rng.integers(0, 65536, (19, 23, 3), dtype=np.uint16)),
    }
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, data in files.items():
        paths[name] = os.path.join(folder, name.replace(" ", "_") + ".png")
        with open(paths[name], "wb") as f:
            f.write(data)
    return paths


def class_folder(root, fault_path=None, classes=4, per_class=3, sixteen_bit=False, seed=1):
    """root/<class>/<i>.png, small grey images (16-bit with `sixteen_bit`), and the fault file
    copied into the first class."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
        base = rng.integers(0, 256, (20, 20))
        for i in range(per_class):
            image = np.clip(base + rng.integers(-20, 21, (20, 20)), 0, 255)
            array = (image * 257).astype(np.uint16) if sixteen_bit else image.astype(np.uint8)
            with open(os.path.join(root, f"class{c}", f"{i}.png"), "wb") as f:
                f.write(png_bytes(array))
    if fault_path:
        shutil.copy(fault_path, os.path.join(root, "class0", os.path.basename(fault_path)))
    return root


# -- tampered exports --------------------------------------------------------------------------

def tampered_exports(export, root):
    """{case: (export copy, the check validate-export must fail)}."""
    cases = {}

    def copy(case):
        target = os.path.join(root, case.replace(" ", "_").replace("/", ""),
                              os.path.basename(export))
        shutil.copytree(export, target, symlinks=True)
        return target

    def edit(folder, change):
        path = os.path.join(folder, "manifest.json")
        with open(path) as f:
            manifest = json.load(f)
        change(manifest)
        with open(path, "w") as f:
            json.dump(manifest, f)
        return manifest

    def flip_byte(path, at=None):
        data = bytearray(open(path, "rb").read())
        at = len(data) // 2 if at is None else at
        data[at] ^= 0x01
        with open(path, "wb") as f:
            f.write(bytes(data))

    with open(os.path.join(export, "manifest.json")) as f:
        manifest = json.load(f)
    onnx_name, version = manifest["onnx"]["path"], str(manifest["version"])

    folder = copy("absolute onnx path")
    edit(folder, lambda m: m["onnx"].__setitem__("path", os.path.abspath(
        os.path.join(export, onnx_name))))
    cases["absolute onnx path"] = (folder, "manifest")
    folder = copy("../ onnx path")
    decoy = os.path.join(os.path.dirname(folder), "decoy")
    os.makedirs(decoy)
    shutil.copy(os.path.join(export, onnx_name), os.path.join(decoy, "other.onnx"))
    edit(folder, lambda m: m["onnx"].__setitem__("path", "../decoy/other.onnx"))
    cases["../ onnx path"] = (folder, "manifest")
    folder = copy("symlink out of the folder")
    os.remove(os.path.join(folder, onnx_name))
    os.symlink(os.path.abspath(os.path.join(export, onnx_name)), os.path.join(folder, onnx_name))
    cases["symlink out of the folder"] = (folder, "manifest")
    folder = copy("changed hash")
    edit(folder, lambda m: m["artifacts"].__setitem__(onnx_name, "0" * 64))
    cases["changed hash"] = (folder, "artifact hashes")
    folder = copy("modified ONNX bytes")
    flip_byte(os.path.join(folder, onnx_name))
    cases["modified ONNX bytes"] = (folder, "artifact hashes")
    folder = copy("modified SavedModel variables")
    variables = os.path.join(folder, version, "variables")
    flip_byte(os.path.join(variables, sorted(f for f in os.listdir(variables)
                                             if f.startswith("variables.data"))[0]))
    cases["modified SavedModel variables"] = (folder, "artifact hashes")
    folder = copy("max_side lifted in the manifest")
    edit(folder, lambda m: m["bounds"].__setitem__("max_side", 100000))
    cases["max_side lifted in the manifest"] = (folder, "bounds in the graphs")
    folder = copy("missing key")
    edit(folder, lambda m: m["bounds"].pop("max_pixels"))
    cases["missing key"] = (folder, "manifest")
    folder = copy("bad JSON")
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        f.write('{"format": "dnc_keras.export/2", "name": ')
    cases["bad JSON"] = (folder, "manifest")
    return cases, onnx_name


# -- requests beyond the bounds, in a fresh process ---------------------------------------------

def request_cases(channels, bounds):
    """{case: (shape, the message's start)}: one request per bound."""
    side, batch, pixels = bounds["max_side"], bounds["max_batch"], bounds["max_pixels"]
    square = min(side, int(pixels ** 0.5))
    other = 3 if channels == 1 else 1
    return {
        "empty batch": ((0, 8, 8, channels), "images is an empty batch"),
        "too many images": ((batch + 1, 8, 8, channels),
                            f"images holds more than the bound of {batch} images"),
        "side too large": ((1, side + 1, 8, channels),
                           f"images larger than the serving bound of {side} px"),
        "too many pixels": ((pixels // (square * square) + 1, square, square, channels),
                            f"request larger than the bound of {pixels} pixels"),
        "wrong channels": ((1, 8, 8, other), f"images must be uint8 [batch, height, width, "
                                              f"{channels}]"),
    }


def request_child(runtime, export):
    """Runs in a fresh process: every request case on one runtime; prints a JSON line each
    ({"case", "error"}: the one-line message the caller gets, or None)."""
    import numpy as np

    with open(os.path.join(export, "manifest.json")) as f:
        manifest = json.load(f)
    channels = manifest["preprocessing"]["channels"]
    if runtime == "edge_infer":
        sys.path.insert(0, os.path.join(common.REPO, "serving"))
        import edge_infer
        import image_input

        model = edge_infer.EdgeModel(os.path.join(export, manifest["onnx"]["path"]))
        run, errors = model.embed, (image_input.InputError,)
    elif runtime == "savedmodel graph":
        import tensorflow as tf

        from dnc_keras.export import signatures as sig
        from dnc_keras.preprocessing import error_reason

        serve = tf.saved_model.load(os.path.join(export, str(manifest["version"]))).signatures[
            sig.DEFAULT_SIGNATURE]

        def run(images):
            try:
                return serve(**{sig.IMAGES_KEY: tf.constant(images)})
            except tf.errors.InvalidArgumentError as error:
                raise ValueError(error_reason(error)) from None

        errors = (ValueError,)
    else:
        from dnc_keras.export import ExportedModel

        model = ExportedModel(export, runtime=runtime.split()[-1])
        run, errors = (lambda images: model.embed(images, batch_size=max(1, len(images)))), \
            (ValueError,)
    for case, (shape, _) in request_cases(channels, manifest["bounds"]).items():
        try:
            run(np.zeros(shape, np.uint8))
            error = None
        except errors as caught:
            error = str(caught)
        print(json.dumps({"case": case, "shape": list(shape), "error": error}), flush=True)


# -- running the commands ----------------------------------------------------------------------

def _env():
    path = os.pathsep.join(p for p in (common.REPO, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3",
            "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}


def execute(argv, cwd, timeout=600):
    """Runs argv in a fresh process; (exit code, stdout, the first error line, stderr lines
    that are not TensorFlow's log, whether a traceback was printed, seconds)."""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stderr.splitlines() if not _LOG.match(line)]
    errors = [line for line in lines if re.search(r"\berror\b", line)]
    # A command that succeeded prints progress on stderr, not an error.
    first = "" if proc.returncode == 0 else errors[0] if errors else (lines[0] if lines else "")
    return (proc.returncode, proc.stdout, first, len(lines),
            "Traceback (most recent call last)" in proc.stderr, seconds)


def shown(argv, cwd):
    """The command as a user types it: `dnc-keras` for `python -m dnc_keras.cli`, paths
    relative to the working folder."""
    words = ["dnc-keras" if w == "dnc_keras.cli" else "python" if w == sys.executable else w
             for w in argv if w != "-m"]
    words = [os.path.relpath(w, cwd) if os.path.isabs(w) and w.startswith(cwd) else w
             for w in words]
    words = ["serving/edge_infer.py" if w == EDGE else w for w in words]
    if words[:1] == ["python"] and words[1:2] == ["dnc-keras"]:
        words = words[1:]
    return shlex.join(words)


DNC = [sys.executable, "-m", "dnc_keras.cli"]


def run_case(rows, group, case, argv, cwd, expect_exit, pattern, expected, check=None):
    """Runs one case, appends its row; `pattern` must match the first error line (exit != 0)
    or `check(stdout)` must return (passed, detail) (exit 0)."""
    code, stdout, first, lines, traceback, seconds = execute(argv, cwd)
    passed = code == expect_exit and not traceback
    detail = ""
    if passed and expect_exit:
        passed = bool(re.search(pattern, first)) and lines == 1
    if passed and check is not None:
        passed, detail = check(stdout)
    row = {"group": group, "case": case, "command": shown(argv, cwd), "expected": expected,
           "exit": code, "first_error_line": first, "stderr_lines": lines,
           "traceback": traceback, "passed": bool(passed), "seconds": round(seconds, 1)}
    if detail:
        row["detail"] = detail
    rows.append(row)
    print(f"{'ok  ' if passed else 'FAIL'} {group}: {case} (exit {code}) {first[:110]}",
          flush=True)
    return stdout


def embeddings(stdout):
    import numpy as np

    return {row["image"]: np.asarray(row["embedding"], np.float32)
            for row in map(json.loads, (l for l in stdout.splitlines() if l.startswith("{")))}


# -- the cases ---------------------------------------------------------------------------------

def image_cases(rows, work, run, export, index, files, tiny):
    onnx_file = os.path.join(export, _manifest(export)["onnx"]["path"])
    faults = ["corrupt", "truncated", "zero-byte", "wrong type", "bomb"]
    readers = {
        "embed (SavedModel)": lambda p: DNC + ["embed", export, p],
        "embed (ONNX Runtime)": lambda p: DNC + ["embed", export, p, "--runtime", "onnx"],
        "embed (run folder)": lambda p: DNC + ["embed", run, p],
        "edge_infer.py": lambda p: [sys.executable, EDGE, onnx_file, p],
        "search": lambda p: DNC + ["search", index, p],
    }
    messages = {"corrupt": "corrupt|Invalid|unreadable|CRC|decode",
                "truncated": "corrupt|Invalid|unreadable|truncated|decode",
                "zero-byte": "not a PNG, JPEG, GIF or BMP file",
                "wrong type": "not a PNG, JPEG, GIF or BMP file",
                "bomb": r"refused before decoding.*12000 12000"}
    chosen = ([("bomb", "embed (ONNX Runtime)"), ("bomb", "edge_infer.py"),
               ("wrong type", "embed (run folder)")] if tiny else
              [(f, r) for f in faults for r in readers if index or r != "search"])
    for fault, reader in chosen:
        path = files[fault]
        run_case(rows, "image files", f"{fault} via {reader}", readers[reader](path), work, 2,
                 re.escape(os.path.basename(path)) + ".*(" + messages[fault] + ")",
                 "exit 2, one line naming the file")
    if not tiny:
        for fault in faults:
            root = class_folder(os.path.join(work, "folders", fault.replace(" ", "_")),
                                files[fault])
            run_case(rows, "image files", f"{fault} in a folder dataset (dnc-keras train)",
                     DNC + ["train", "--dataset", "folder", "--data-dir", root, *TRAIN_FOLDER,
                            "--out", os.path.join(work, "runs", fault.replace(" ", "_"))],
                     work, 2, re.escape(os.path.basename(files[fault])) + ".*(" +
                     messages[fault] + ")", "exit 2, one line naming the file")


def sixteen_bit_cases(rows, work, run, export, files, tiny):
    """16-bit PNGs read alike everywhere: every reader's embeddings within PARITY of the run's
    own evaluation path."""
    onnx_file = os.path.join(export, _manifest(export)["onnx"]["path"])
    images = [files["16-bit grey"], files["16-bit RGB"]]
    reference = embeddings(run_case(rows, "16-bit images", "embed (run folder)",
                                    DNC + ["embed", run, *images], work, 0, None,
                                    "exit 0: the run's evaluation embeddings"))
    readers = {"embed (SavedModel serving_bytes)": DNC + ["embed", export, *images],
               "embed (ONNX Runtime)": DNC + ["embed", export, *images, "--runtime", "onnx"],
               "edge_infer.py (Pillow)": [sys.executable, EDGE, onnx_file, *images]}
    if tiny:
        readers = {k: v for k, v in readers.items() if k.startswith("edge")}

    def agree(stdout):
        found = embeddings(stdout)
        if set(found) != set(reference) or not reference:
            return False, f"embedded {sorted(found)}"
        worst = max(float(abs(found[k] - reference[k]).max()) for k in reference)
        return worst <= PARITY, f"max |diff| from the run's embeddings {worst:.1e}"

    for reader, argv in readers.items():
        run_case(rows, "16-bit images", reader, argv, work, 0, None,
                 f"exit 0, embeddings within {PARITY} of the run's", check=agree)
    if not tiny:
        root = class_folder(os.path.join(work, "folders", "sixteen_bit"), sixteen_bit=True)
        run_case(rows, "16-bit images", "a folder dataset of them (dnc-keras train)",
                 DNC + ["train", "--dataset", "folder", "--data-dir", root, *TRAIN_FOLDER,
                        "--json", "--out", os.path.join(work, "runs", "sixteen_bit")],
                 work, 0, None, "exit 0: trains")


def tamper_cases(rows, work, export, tiny):
    cases, onnx_name = tampered_exports(export, os.path.join(work, "tampered"))
    chosen = ["max_side lifted in the manifest", "modified ONNX bytes"] if tiny else list(cases)
    for case in chosen:
        folder, check = cases[case]
        run_case(rows, "tampered exports", f"{case} (validate-export)",
                 DNC + ["validate-export", folder], work, 2,
                 r"check\(s\) failed: .*" + re.escape(check),
                 f"exit 2, the check {check!r} fails")
    edge_cases = {"modified ONNX bytes": r"differs from the export",
                  "max_side lifted in the manifest": r"other bounds",
                  "missing key": r"bounds\.max_pixels' is missing",
                  "bad JSON": r"not valid JSON"}
    for case, pattern in edge_cases.items():
        if case in chosen:
            folder, _ = cases[case]
            run_case(rows, "tampered exports", f"{case} (edge_infer.py)",
                     [sys.executable, EDGE, os.path.join(folder, onnx_name),
                      os.path.join(work, "files", "16-bit_grey.png")], work, 2, pattern,
                     "exit 2, one line naming the file")


def request_bound_cases(rows, work, export, files, tiny):
    manifest = _manifest(export)
    channels, bounds = manifest["preprocessing"]["channels"], manifest["bounds"]
    expected = request_cases(channels, bounds)
    runtimes = (["ExportedModel onnx", "edge_infer"] if tiny else
                ["savedmodel graph", "ExportedModel savedmodel", "ExportedModel onnx",
                 "edge_infer"])
    seen = {}
    for runtime in runtimes:
        argv = [sys.executable, os.path.abspath(__file__), "--request", runtime, export]
        code, stdout, first, _, traceback, seconds = execute(argv, work)
        found = {row["case"]: row for row in map(json.loads, (
            l for l in stdout.splitlines() if l.startswith("{")))}
        for case, (shape, start) in expected.items():
            error = (found.get(case) or {}).get("error") or ""
            seen.setdefault(case, set()).add(error)
            passed = code == 0 and not traceback and error.startswith(start)
            rows.append({"group": "oversized requests", "case": f"{case} ({runtime})",
                         "command": shown(argv, work) + f"  # uint8 {list(shape)}",
                         "expected": f"refused: {start} ...", "exit": code,
                         "first_error_line": error, "stderr_lines": 0 if not error else 1,
                         "traceback": traceback, "passed": passed,
                         "seconds": round(seconds, 1)})
            print(f"{'ok  ' if passed else 'FAIL'} oversized requests: {case} ({runtime}) "
                  f"{error[:100]}", flush=True)
    for case, messages in seen.items():  # one message per case, whatever the runtime
        rows.append({"group": "oversized requests", "case": f"{case}: the same message on "
                     f"every runtime", "command": "", "expected": "one message",
                     "exit": None, "first_error_line": sorted(messages)[0],
                     "stderr_lines": len(messages), "traceback": False,
                     "passed": len(messages) == 1, "seconds": 0.0})
    # Files beyond the bounds, refused from their headers.
    side = bounds["max_side"]
    wide = os.path.join(work, "files", f"wide_{side + 1}.png")
    with open(wide, "wb") as f:
        f.write(bomb_png_rect(2, side + 1))
    onnx_file = os.path.join(export, manifest["onnx"]["path"])
    readers = {"embed (SavedModel)": DNC + ["embed", export, wide],
               "embed (ONNX Runtime)": DNC + ["embed", export, wide, "--runtime", "onnx"],
               "edge_infer.py": [sys.executable, EDGE, onnx_file, wide]}
    if tiny:
        readers = {k: v for k, v in readers.items() if k.startswith("edge")}
    for reader, argv in readers.items():
        run_case(rows, "oversized requests", f"a file {side + 1} px wide via {reader}", argv,
                 work, 2, rf"refused before decoding.*sides in \[1, {side}\]",
                 "exit 2, refused from its header")


def bomb_png_rect(height, width):
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(b"\x00" * (width + 1)) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", data + compressor.flush()) + _chunk(b"IEND", b""))


def _manifest(export):
    with open(os.path.join(export, "manifest.json")) as f:
        return json.load(f)


def set_up(work, rows):
    """Trains, exports and indexes the digits case, each step a fresh process."""
    run, exports = os.path.join(work, "run"), os.path.join(work, "exports")
    for step, argv in (("train", DNC + ["train", *TRAIN_DIGITS, "--out", run]),
                       ("export", DNC + ["export", run, "--name", "digits", "--out", exports])):
        code, _, first, _, _, _ = execute(argv, work)
        if code:
            raise SystemExit(f"setting up: dnc-keras {step} failed: {first}")
    return run, os.path.join(exports, "digits")


def build_index(work, export):
    """A gallery of digits PNGs and `dnc-keras build-index` of it (a fresh process)."""
    import numpy as np

    from dnc_keras import datasets

    data = datasets.load("digits")
    images = np.round(data.x_test * 255).astype(np.uint8)
    gallery = os.path.join(work, "gallery")
    for i in range(20):
        folder = os.path.join(gallery, f"class{data.y_test[i]}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i}.png"), "wb") as f:
            f.write(png_bytes(images[i][..., 0]))
    index = os.path.join(work, "index")
    code, _, first, _, _, _ = execute(DNC + ["build-index", gallery, "--model", export,
                                             "--out", index], work)
    if code:
        raise SystemExit(f"setting up: dnc-keras build-index failed: {first}")
    return index


def main(argv=None):
    args = parse_args(argv)
    if args.request:
        return request_child(*args.request)
    work = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="export_faults-"))
    os.makedirs(work, exist_ok=True)
    rows = []
    try:
        if args.run:
            run, export = os.path.abspath(args.run), os.path.abspath(args.export)
        else:
            run, export = set_up(work, rows)
        index = None if args.tiny else build_index(work, export)
        bounds = _manifest(export)["bounds"]  # read now: the work folder goes at the end
        files = fault_files(os.path.join(work, "files"))
        image_cases(rows, work, run, export, index, files, args.tiny)
        sixteen_bit_cases(rows, work, run, export, files, args.tiny)
        tamper_cases(rows, work, export, args.tiny)
        request_bound_cases(rows, work, export, files, args.tiny)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    passed = sum(r["passed"] for r in rows)
    groups = {}
    for row in rows:
        group = groups.setdefault(row["group"], {"cases": 0, "passed": 0})
        group["cases"] += 1
        group["passed"] += row["passed"]
    results = {"subset": "tiny" if args.tiny else "all", "bounds": bounds,
               "cases": len(rows), "passed": passed, "groups": groups, "rows": rows}
    print(f"{passed} of {len(rows)} cases as expected")
    return common.write_results(results, args.out, argv, __file__, name="export_faults")


if __name__ == "__main__":
    main()
