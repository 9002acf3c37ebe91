"""Fixtures that build malicious uploads at test time (nothing hostile is checked into the repo)."""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


class MarkerFilePayload:
    """Unpickling this object runs ``exec`` and creates ``path``: proof that code executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.path)!r}, 'w').close()",))


@pytest.fixture
def marker_path(tmp_path: Path) -> Path:
    return tmp_path / "payload-executed.marker"


@pytest.fixture
def make_armed_pickle(marker_path: Path) -> Callable[[int], bytes]:
    def build(protocol: int) -> bytes:
        return pickle.dumps(MarkerFilePayload(marker_path), protocol=protocol)

    return build


@pytest.fixture
def armed_pickle(make_armed_pickle: Callable[[int], bytes], tmp_path: Path) -> bytes:
    # Control: prove the payload is live by executing an identical one aimed at another file.
    # This is the only place anything is unpickled, and it is test-built bytes, never an upload.
    control_marker = tmp_path / "control.marker"
    pickle.loads(pickle.dumps(MarkerFilePayload(control_marker), protocol=4))
    assert control_marker.exists(), "the payload must actually execute when unpickled"
    return make_armed_pickle(4)


@pytest.fixture
def torch_style_zip(armed_pickle: bytes) -> bytes:
    """The layout torch.save has used since 1.6: <name>/data.pkl plus raw storages and a version."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", armed_pickle)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", b"\x00" * 16)
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


@pytest.fixture
def armed_object_npy(marker_path: Path) -> bytes:
    """A .npy object array (stored as a pickle) whose first element runs the payload when loaded."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([MarkerFilePayload(marker_path), 1.0], dtype=object), allow_pickle=True)
    return buffer.getvalue()
