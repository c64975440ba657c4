"""The export manifest: one schema, written by `build`, read (and checked) by everything else.

`manifest.json` sits in DIR/NAME beside the version folders and the ONNX files, and a copy
travels inside each version folder (assets.extra/dnc_keras_manifest.json). It holds the
preprocessing record the graph runs, the bounds of a request, the embedding's contract, the
artifacts with their SHA-256, the source run, the parity and retrieval checks made at export,
and the software versions. Readers never trust it blindly: `read_manifest` checks every field
they rely on and that every path stays inside the export folder, `verify_artifacts` checks
files against their recorded SHA-256 (corruption and accidental edits, not an attacker who
rewrites both), and `check_bounds_agree` holds the manifest's copy of the bounds to the ones
the artifacts themselves carry (graph constants, ONNX metadata).
"""

from __future__ import annotations

import hashlib
import json
import os
import re

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
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    return read_manifest_file(path, export_dir)


def read_manifest_file(path, export_dir):
    """The manifest at `path` (the export's own or a version folder's copy), checked against
    `export_dir`; ManifestError if it is not JSON or not a manifest this dnc_keras reads."""
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path} is not valid JSON ({error})") from None
    except OSError as error:
        raise ManifestError(f"cannot read {path}: {error.strerror}") from None
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
        _field(manifest, key, kind, where)
    try:
        Preprocessing.from_dict(manifest["preprocessing"])
    except (ValueError, TypeError) as error:
        raise ManifestError(f"{where}: field 'preprocessing': {error}") from None
    for name in ("max_side", "max_batch", "max_pixels"):
        value = _field(manifest["bounds"], name, int, where, "bounds.")
        if value < 1:
            raise ManifestError(f"{where}: field 'bounds.{name}' must be a positive int. "
                                f"Received: {value!r}")
    _field(manifest["embedding"], "dim", int, where, "embedding.")
    _field(manifest["savedmodel"], "signatures", dict, where, "savedmodel.")
    for section in ("savedmodel", "onnx"):
        inside(export_dir, _field(manifest[section], "path", str, where, f"{section}."))
    if manifest["savedmodel"]["path"] != str(manifest["version"]):
        raise ManifestError(f"{where}: field 'savedmodel.path' must be the version folder "
                            f"{str(manifest['version'])!r}. Received: "
                            f"{manifest['savedmodel']['path']!r}")
    for mode, variant in manifest["variants"].items():
        if not isinstance(variant, dict):
            raise ManifestError(f"{where}: field 'variants.{mode}' must be an object")
        inside(export_dir, _field(variant, "path", str, where, f"variants.{mode}."))
    artifacts = _field(manifest, "artifacts", dict, where)
    for relative, digest in artifacts.items():
        inside(export_dir, relative)
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise ManifestError(f"{where}: field 'artifacts' must map each file to its SHA-256 "
                                f"(64 hex digits). Received for {relative!r}: {digest!r:.80}")


def _field(mapping, key, kind, where, prefix=""):
    """mapping[key], refused with one line naming it unless it is a `kind`."""
    value = mapping.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        article = "an" if kind.__name__[0] in "aeiou" else "a"
        state = "is missing" if key not in mapping else f"must be {article} {kind.__name__}"
        raise ManifestError(f"{where}: field {prefix + key!r} {state}"
                            + ("" if key not in mapping else f". Received: {value!r:.80}"))
    return value


def verify_artifacts(export_dir, manifest, names=None):
    """Checks files of the export against the SHA-256 the manifest records for them.

    Args:
        names: files or folders (relative to the folder) to check: every file under a folder
            must be listed, and every listed file under it must be there. Defaults to `None`:
            every artifact of the manifest.

    Raises:
        ManifestError: naming the first file that is missing, changed or not listed.
    """
    artifacts = manifest.get("artifacts") or {}
    if not artifacts:
        raise ManifestError(f"{export_dir}: the manifest records no artifact hashes")
    names = list(artifacts) if names is None else list(names)
    for name in names:
        path = inside(export_dir, name)
        if os.path.isdir(path):
            listed = {rel for rel in artifacts if rel.startswith(name.rstrip("/") + "/")}
            present = set(artifact_files(export_dir, [name]))
            for extra in sorted(present - listed):
                raise ManifestError(f"{os.path.join(export_dir, extra)} is not among the "
                                    "manifest's artifacts (added after export?)")
            files = sorted(listed)
        else:
            files = [name]
        for relative in files:
            full = inside(export_dir, relative)
            if relative not in artifacts:
                raise ManifestError(f"{full} is not among the manifest's artifacts")
            if not os.path.isfile(full):
                raise ManifestError(f"{full} is missing (the manifest lists it)")
            if sha256(full) != artifacts[relative]:
                raise ManifestError(f"{full} differs from the export: its SHA-256 is not the "
                                    "manifest's (corrupted or changed since; export again)")


def check_bounds_agree(where, found, manifest):
    """Raises ManifestError unless the bounds an artifact holds (`found`) are the manifest's."""
    expected = {k: manifest["bounds"][k] for k in ("max_side", "max_batch", "max_pixels")}
    found = {k: found.get(k) for k in expected} if isinstance(found, dict) else found
    if found != expected:
        diff = ", ".join(f"{k} {found.get(k) if isinstance(found, dict) else None} in the "
                         f"artifact, {v} in the manifest" for k, v in expected.items()
                         if not isinstance(found, dict) or found.get(k) != v)
        raise ManifestError(f"{where} enforces other bounds than the manifest says: {diff}")


def artifact_files(folder, names):
    """Relative paths of the files `names` in `folder`, and of every file under those that are
    directories (the manifest copy of a version folder aside: it holds the hashes)."""
    files = []
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            for root, _, found in os.walk(path):
                for file in sorted(found):
                    relative = os.path.relpath(os.path.join(root, file), folder)
                    if relative != os.path.join(name, MANIFEST_COPY):
                        files.append(relative)
        else:
            files.append(name)
    return sorted(files)


def artifact_hashes(folder, names):
    """{relative path: sha256} of `artifact_files(folder, names)`."""
    return {relative: sha256(os.path.join(folder, relative))
            for relative in artifact_files(folder, names)}


def model_hash(manifest):
    """One hash for the exported model: of the SavedModel's and ONNX file's artifact hashes.

    Two exports of the same weights and preprocessing have the same hash only if their graph
    files are byte-identical; an index records it and refuses queries made by another.
    """
    version = str(manifest["version"])
    parts = sorted((k, v) for k, v in manifest.get("artifacts", {}).items()
                   if k.startswith(version + os.sep) or k == manifest["onnx"]["path"])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()
