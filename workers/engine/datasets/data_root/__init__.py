"""Datasets read from the operator's data root (``LETHE_DATA_ROOT``) in torchvision's on-disk formats.

Torch-free: the API reads a dataset once at registration (validating every file and computing the content
digest) and the worker reads it again at each load, checking the digest. See :mod:`.formats` for the
formats and :mod:`.files` for path safety and the digest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from workers.engine.datasets.arrays import ArrayDataset
from workers.engine.datasets.data_root.files import (
    DataRootPathError,
    DatasetFilesError,
    FileReader,
    resolve_under,
)
from workers.engine.datasets.data_root.formats import (
    DATA_ROOT_FORMATS,
    DataRootConfig,
    DataRootFormat,
    to_array_dataset,
)
from workers.engine.errors import InvalidInputError, UnknownEntryError


class DataRootConfigError(InvalidInputError):
    """The format's options did not validate."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


@dataclass(frozen=True)
class DataRootRead:
    dataset: ArrayDataset  # uint8 images, int64 labels, the config's normalisation
    config: dict[str, Any]  # the validated format options (JSON), normalisation included
    files_sha256: str  # files.FileReader.digest(): the content digest of every file read
    files: list[dict[str, object]]  # per file: name, bytes, sha256
    total_bytes: int
    class_names: list[str]


def data_root_format(name: str) -> DataRootFormat:
    try:
        return DATA_ROOT_FORMATS.get(name)
    except UnknownEntryError as error:
        raise InvalidInputError(str(error).strip("'\"")) from None


def parse_config(spec: DataRootFormat, config: Mapping[str, Any]) -> DataRootConfig:
    try:
        return spec.config_model.model_validate(dict(config))
    except ValidationError as error:
        raise DataRootConfigError(
            f"invalid config for data-root format '{spec.name}'",
            [dict(item) for item in error.errors(include_url=False)],
        ) from None


def read_dataset(root: Path, format_name: str, path: str, config: Mapping[str, Any]) -> DataRootRead:
    """Read the dataset at ``root/path`` in ``format_name``; InvalidInputError (a subclass says which
    problem) for an unknown format, a bad config, an unsafe path or files not in the format's layout."""
    spec = data_root_format(format_name)
    parsed = parse_config(spec, config)
    directory = resolve_under(root, path)
    reader = FileReader(root=root.resolve(strict=True), directory=directory)
    files = spec.read(reader, parsed)
    dataset = to_array_dataset(files, parsed)
    return DataRootRead(
        dataset=dataset,
        config=parsed.model_dump(mode="json"),
        files_sha256=reader.digest(),
        files=reader.manifest(),
        total_bytes=reader.total_bytes,
        class_names=files.class_names,
    )


__all__ = [
    "DATA_ROOT_FORMATS",
    "DataRootConfigError",
    "DataRootPathError",
    "DataRootRead",
    "DatasetFilesError",
    "data_root_format",
    "read_dataset",
]
