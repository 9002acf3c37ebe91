"""Format sniffing, pickle rejection and the IntakeError contract."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from app.intake import (
    INTAKE_ERROR_CODES,
    IntakeError,
    IntakeErrorCode,
    UploadFormat,
    reject_pickle,
    sniff_format,
    validate_npz,
    validate_safetensors,
)
from app.intake.errors import MAX_FINDINGS_REPORTED, finding, raise_findings

INTAKE_SOURCE_DIR = Path(__file__).resolve().parents[3] / "app" / "intake"
LIMIT = 10 * 1024 * 1024
UNPICKLING_MODULES = {"torch", "pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x_train=np.zeros((2, 3)), y_train=np.array([0, 1]))
    return buffer.getvalue()


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_armed_pickles_are_sniffed_and_rejected_without_running(
    protocol: int, make_armed_pickle: Callable[[int], bytes], marker_path: Path
) -> None:
    payload = make_armed_pickle(protocol)
    assert sniff_format(payload) == UploadFormat.PICKLE
    with pytest.raises(IntakeError) as excinfo:
        reject_pickle(payload, "model checkpoint")
    assert excinfo.value.code == "pickle-rejected"
    assert "save_file(model.state_dict()" in excinfo.value.detail
    assert not marker_path.exists()


def test_armed_pickle_is_rejected_by_both_validators(armed_pickle: bytes, marker_path: Path) -> None:
    for validate in (
        lambda: validate_safetensors(armed_pickle, None, max_bytes=LIMIT),
        lambda: validate_npz(armed_pickle, max_bytes=LIMIT, max_uncompressed_bytes=LIMIT),
    ):
        with pytest.raises(IntakeError) as excinfo:
            validate()
        assert excinfo.value.code == "pickle-rejected"
        assert excinfo.value.status == 422
    assert not marker_path.exists()


def test_torch_zip_with_data_pkl_is_a_pickle(torch_style_zip: bytes, marker_path: Path) -> None:
    assert sniff_format(torch_style_zip) == UploadFormat.PICKLE
    for validate in (
        lambda: validate_safetensors(torch_style_zip, None, max_bytes=LIMIT),
        lambda: validate_npz(torch_style_zip, max_bytes=LIMIT, max_uncompressed_bytes=LIMIT),
    ):
        with pytest.raises(IntakeError) as excinfo:
            validate()
        assert excinfo.value.code == "pickle-rejected"
        assert "torch.save" in excinfo.value.detail
    assert not marker_path.exists()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (safetensors.numpy.save({"w": np.ones(3, np.float32)}), UploadFormat.SAFETENSORS),
        (_npz_bytes(), UploadFormat.NPZ),
        (b"PK\x05\x06" + b"\x00" * 18, UploadFormat.ZIP),  # an empty zip
        (b"PK\x03\x04 truncated", UploadFormat.ZIP),
        (b"", UploadFormat.OTHER),
        (b"hello world", UploadFormat.OTHER),
        (b"cannot be parsed.", UploadFormat.OTHER),
        (b"\x93NUMPY\x01\x00", UploadFormat.OTHER),
    ],
)
def test_sniff_format_classifies_uploads(data: bytes, expected: UploadFormat) -> None:
    assert sniff_format(data) == expected


def test_sniff_zip_with_non_npy_members_is_plain_zip() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("models/model.json", json.dumps({"graph": []}))
    assert sniff_format(buffer.getvalue()) == UploadFormat.ZIP


def test_reject_pickle_returns_format_of_non_pickles() -> None:
    assert reject_pickle(_npz_bytes(), "dataset") == UploadFormat.NPZ


def test_intake_error_rejects_unknown_codes_and_maps_status() -> None:
    with pytest.raises(ValueError, match="unknown intake error code"):
        IntakeError("made-up-code", "detail")
    assert IntakeError("upload-too-large", "x").status == 413
    assert IntakeError("unsupported-format", "x").status == 415
    error = IntakeError("shape-mismatch", "x", errors=[{"code": "shape-mismatch", "message": "m"}])
    assert error.status == 422
    assert isinstance(error, ValueError)
    assert error.to_dict() == {
        "code": "shape-mismatch",
        "title": "Shape mismatch",
        "status": 422,
        "detail": "x",
        "errors": [{"code": "shape-mismatch", "message": "m"}],
    }
    assert {code.value for code in IntakeErrorCode} == INTAKE_ERROR_CODES


def test_raise_findings_uses_shared_code_or_mixed_code_and_bounds_the_list() -> None:
    same = [
        finding("missing-keys", f"Missing key {i}.", key=str(i)) for i in range(MAX_FINDINGS_REPORTED + 50)
    ]
    with pytest.raises(IntakeError) as excinfo:
        raise_findings(same, mixed_code="state-dict-mismatch", summary="Bad.")
    assert excinfo.value.code == "missing-keys"
    assert len(excinfo.value.errors) == MAX_FINDINGS_REPORTED
    assert f"{MAX_FINDINGS_REPORTED} of {MAX_FINDINGS_REPORTED + 50} listed" in excinfo.value.detail

    mixed = [finding("missing-keys", "a"), finding("shape-mismatch", "b")]
    with pytest.raises(IntakeError) as excinfo:
        raise_findings(mixed, mixed_code="state-dict-mismatch", summary="Bad.")
    assert excinfo.value.code == "state-dict-mismatch"
    raise_findings([], mixed_code="state-dict-mismatch", summary="nothing to report")


def test_intake_package_never_imports_torch_or_pickle() -> None:
    probe = "import sys, app.intake; assert 'torch' not in sys.modules, 'app.intake imported torch'"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=INTAKE_SOURCE_DIR.parents[1],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Static check (the user-facing hints may *mention* torch.load, so scan code, not text).
    for source in INTAKE_SOURCE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported = {(node.module or "").split(".")[0]}
            else:
                imported = set()
            assert not imported & UNPICKLING_MODULES, f"{source.name} imports {imported & UNPICKLING_MODULES}"
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, source.name
