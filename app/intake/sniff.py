"""Recognise what an upload is from its bytes (never from its file name or Content-Type).

Sniffing only routes uploads and picks the most helpful error message: nothing here loads or
executes content, and the validators re-check the structure they rely on. In particular a file
that looks like both safetensors and something else is treated as safetensors, which is then
parsed as plain data and cannot run code whatever else it is.
"""

from __future__ import annotations

import re
import struct
from enum import StrEnum

from app.intake._zip import ZIP_PARSE_ERRORS, read_zip_directory, starts_like_zip
from app.intake.errors import IntakeError, IntakeErrorCode


class UploadFormat(StrEnum):
    PICKLE = "pickle"  # a raw pickle, or a torch.save / TorchScript / torch.package zip holding .pkl members
    NPZ = "npz"  # a zip whose members are all .npy files
    ZIP = "zip"  # any other (or unreadable) zip archive, e.g. a torch.export .pt2
    SAFETENSORS = "safetensors"
    OTHER = "other"


# Pickle protocols 2-5 start with the PROTO opcode followed by the protocol number.
PICKLE_PROTO_OPCODE = 0x80
PICKLE_PROTOCOLS_WITH_PROTO_OPCODE = range(2, 6)
# Protocol 0/1 pickles have no marker. Classic exploit pickles start with GLOBAL
# (``c<module>\n<name>\n``) or MARK (``(``), and every pickle ends with STOP (``.``). This is a
# heuristic that only improves the message for such files: anything unrecognised is rejected anyway.
PICKLE_GLOBAL_OPCODE_PATTERN = re.compile(rb"c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n")
PICKLE_MARK_OPCODE = b"("
PICKLE_STOP_OPCODE = b"."
# torch.save (zip format), TorchScript and torch.package archives keep their pickles in these.
PICKLE_MEMBER_SUFFIX = ".pkl"
NPY_MEMBER_SUFFIX = ".npy"

SAFETENSORS_LENGTH_PREFIX_BYTES = 8
_SAFETENSORS_HEADER_START = ord("{")
# Smallest possible header is ``{}``.
_SAFETENSORS_MIN_HEADER_BYTES = 2

SAFETENSORS_CONVERSION_HINT = (
    "Convert it to safetensors in your own environment and upload that instead: "
    "`from safetensors.torch import save_file; "
    'save_file(model.state_dict(), "model.safetensors")` '
    "(for a file written by torch.save, load it first with "
    "`state_dict = torch.load(path, weights_only=True)` and save that state_dict)."
)


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < SAFETENSORS_LENGTH_PREFIX_BYTES + _SAFETENSORS_MIN_HEADER_BYTES:
        return False
    (header_length,) = struct.unpack_from("<Q", data, 0)
    return (
        _SAFETENSORS_MIN_HEADER_BYTES <= header_length <= len(data) - SAFETENSORS_LENGTH_PREFIX_BYTES
        and data[SAFETENSORS_LENGTH_PREFIX_BYTES] == _SAFETENSORS_HEADER_START
    )


def _looks_like_raw_pickle(data: bytes) -> bool:
    if len(data) >= 2 and data[0] == PICKLE_PROTO_OPCODE and data[1] in PICKLE_PROTOCOLS_WITH_PROTO_OPCODE:
        return True
    if not data.endswith(PICKLE_STOP_OPCODE):
        return False
    return data.startswith(PICKLE_MARK_OPCODE) or PICKLE_GLOBAL_OPCODE_PATTERN.match(data) is not None


def _classify_zip(data: bytes) -> UploadFormat:
    try:
        members = read_zip_directory(data)
    except ZIP_PARSE_ERRORS:
        return UploadFormat.ZIP
    names = [member.filename for member in members]
    if any(name.endswith(PICKLE_MEMBER_SUFFIX) for name in names):
        return UploadFormat.PICKLE
    if names and all(name.endswith(NPY_MEMBER_SUFFIX) for name in names):
        return UploadFormat.NPZ
    return UploadFormat.ZIP


def sniff_format(data: bytes) -> str:
    """Classify ``data`` as one of :class:`UploadFormat` (returned as its string value).

    Never raises, whatever the bytes.
    """
    if _looks_like_safetensors(data):
        return UploadFormat.SAFETENSORS
    if _looks_like_raw_pickle(data):
        return UploadFormat.PICKLE
    if starts_like_zip(data):
        return _classify_zip(data)
    return UploadFormat.OTHER


def reject_pickle(data: bytes, what: str, *, hint: str = SAFETENSORS_CONVERSION_HINT) -> str:
    """Raise ``pickle-rejected`` if ``data`` is a pickle (raw or inside a torch zip); else return its format.

    ``what`` names the upload in the message ("model checkpoint", "dataset"); ``hint`` says how to
    convert it to an accepted format.
    """
    detected = sniff_format(data)
    if detected != UploadFormat.PICKLE:
        return detected
    container = (
        "a zip archive with pickled members (the format torch.save, TorchScript and torch.package write)"
        if starts_like_zip(data)
        else "a Python pickle"
    )
    raise IntakeError(
        IntakeErrorCode.PICKLE_REJECTED,
        f"The uploaded {what} is {container}. Lethe never loads pickles, because unpickling can run "
        f"arbitrary code on the server. {hint}",
    )
