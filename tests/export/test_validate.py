"""validate-export: passes on a good export, fails naming the check on a broken or tampered one."""

import json
import shutil

from dnc_keras.export.validate import validate_export


def test_validate_export_passes(export_dir):
    checks = validate_export(export_dir)
    assert all(c.passed for c in checks), [vars(c) for c in checks if not c.passed]
    names = [c.name for c in checks]
    assert {"parity", "artifact hashes", "bounds in the graphs", "retrieval against the run",
            "variant int8"} <= set(names)


def test_a_broken_onnx_file_fails_its_hash(export_dir, tmp_path):
    copy = tmp_path / "digits"
    shutil.copytree(export_dir, copy)
    (copy / "digits.onnx").write_bytes(b"not an onnx model")
    checks = {c.name: c for c in validate_export(str(copy))}
    assert not checks["artifact hashes"].passed
    assert "digits.onnx" in checks["artifact hashes"].detail


def test_a_manifest_pointing_outside_fails(export_dir, tmp_path):
    copy = tmp_path / "digits"
    shutil.copytree(export_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["onnx"]["path"] = "../../decoy/other.onnx"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    checks = validate_export(str(copy))
    assert not checks[0].passed and "leaves the export folder" in checks[0].detail
