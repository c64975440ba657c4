"""The export manifest: one schema, written by `build`, read (and checked) by everything else.

`manifest.json` sits in DIR/NAME beside the version folders and the ONNX files, and a copy
travels inside each version folder (assets.extra/dnc_keras_manifest.json). It holds the
preprocessing record the graph runs, the bounds of a request, the embedding's contract, the
artifacts with their SHA-256, the source run, the parity and retrieval checks made at export,
and the software versions. Readers never trust it blindly: `read_manifest` checks every field
they rely on and that every path stays inside the export folder.
"""

from __future__ import annotations

import hashlib
import json
import os

from dnc_keras.preprocessing import Preprocessing

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "dnc_keras.export/2"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MANIFEST_COPY = os.path.join("assets.extra", "dnc_keras_manifest.json")
DISTANCE = "euclidean"

# key -> type of the top-level fields every reader relies on.
_REQUIRED = {"format": str, "name": str, "version": int, "preprocessing": dict,
             "bounds": dict, "embedding": dict, "savedmodel": dict, "onnx": dict,
             "variants": dict, "model": dict}


class ManifestError(ValueError):
    """A manifest that is missing, malformed or points outside its export folder."""


def sha256(path, chunk=1 << 20):
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def inside(export_dir, relative):
    """`export_dir/relative`, refused unless it is a relative path that stays inside."""
    if not isinstance(relative, str) or not relative or os.path.isabs(relative):
        raise ManifestError(f"manifest path {relative!r} must be relative to {export_dir}")
    root = os.path.realpath(export_dir)
    path = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([root, path]) != root:
        raise ManifestError(f"manifest path {relative!r} leaves the export folder {export_dir}")
    return path


def read_manifest(export_dir):
    """The manifest of an export folder (DIR/NAME), its schema and paths checked.

    Raises:
        FileNotFoundError: no manifest.json.
        ManifestError: not JSON, another format, a missing or mistyped field, a path outside.
    """
    path = os.path.join(export_dir, MANIFEST_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {export_dir} a folder written by "
                                "`dnc-keras export` (saved_models/NAME)?")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path} is not valid JSON ({error})") from None
    check_manifest(manifest, export_dir, path)
    return manifest


def check_manifest(manifest, export_dir, where=MANIFEST_NAME):
    """Raises ManifestError naming the first field readers could not rely on."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{where}: expected format {MANIFEST_FORMAT!r}. Received: "
                            f"{manifest.get('format')!r} (re-export with this dnc_keras)")
    for key, kind in _REQUIRED.items():
        if not isinstance(manifest.get(key), kind):
            raise ManifestError(f"{where}: field {key!r} must be a {kind.__name__}. Received: "
                                f"{manifest.get(key)!r:.80}")
    try:
        Preprocessing.from_dict(manifest["preprocessing"])
        for name in ("max_side", "max_batch", "max_pixels"):
            value = manifest["bounds"][name]
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"bounds.{name} must be a positive int, got {value!r}")
        if not isinstance(manifest["embedding"].get("dim"), int):
            raise ValueError("embedding.dim must be an int")
    except (ValueError, KeyError, TypeError) as error:
        raise ManifestError(f"{where}: {error}") from None
    for section in ("savedmodel", "onnx"):
        inside(export_dir, manifest[section].get("path"))
    for mode, variant in manifest["variants"].items():
        if not isinstance(variant, dict):
            raise ManifestError(f"{where}: variants.{mode} must be an object")
        inside(export_dir, variant.get("path"))
    for relative in manifest.get("artifacts", {}):
        inside(export_dir, relative)


def write_json(path, value):
    """Writes JSON to a temporary file and renames it: readers never see half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def artifact_hashes(folder, names):
    """{relative path: sha256} of files, and of every file under directories, in `folder`."""
    hashes = {}
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            for root, _, files in os.walk(path):
                for file in sorted(files):
                    full = os.path.join(root, file)
                    relative = os.path.relpath(full, folder)
                    if relative != os.path.join(name, MANIFEST_COPY):
                        hashes[relative] = sha256(full)
        else:
            hashes[name] = sha256(path)
    return dict(sorted(hashes.items()))


def model_hash(manifest):
    """One hash for the exported model: of the SavedModel's and ONNX file's artifact hashes.

    Two exports of the same weights and preprocessing have the same hash only if their graph
    files are byte-identical; an index records it and refuses queries made by another.
    """
    version = str(manifest["version"])
    parts = sorted((k, v) for k, v in manifest.get("artifacts", {}).items()
                   if k.startswith(version + os.sep) or k == manifest["onnx"]["path"])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()
