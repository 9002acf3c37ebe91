"""Safe intake of user uploads: format sniffing, safetensors checkpoints and .npz datasets.

Nothing here imports torch or unpickles anything; see architecture.md §5.
"""

from app.intake.errors import INTAKE_ERROR_CODES, IntakeError, IntakeErrorCode
from app.intake.npz_check import NpzDataset, validate_npz
from app.intake.safetensors_check import (
    ALLOWED_DTYPES,
    SafetensorsSummary,
    load_safetensors_arrays,
    validate_safetensors,
    weights_digest,
)
from app.intake.sniff import UploadFormat, reject_pickle, sniff_format

__all__ = [
    "ALLOWED_DTYPES",
    "INTAKE_ERROR_CODES",
    "IntakeError",
    "IntakeErrorCode",
    "NpzDataset",
    "SafetensorsSummary",
    "UploadFormat",
    "load_safetensors_arrays",
    "reject_pickle",
    "sniff_format",
    "validate_npz",
    "validate_safetensors",
    "weights_digest",
]
