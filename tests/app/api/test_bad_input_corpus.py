"""The bad-input corpus: hostile and broken requests through the real API (issue 9).

One table, ``CASES``: each case names a request, the 4xx status and the problem ``code`` it must get,
and a fragment its ``detail`` must contain (the message says what is wrong). For every case the test
also checks that the answer is RFC 9457 problem+json, that no code ran (the pickle payloads create a
marker file when unpickled), and that nothing was persisted: the row count of every table, every path
under the artifact directory and the publisher's queue are the same before and after.

The app under test has small upload limits (``UPLOAD_LIMIT``, ``UNCOMPRESSED_LIMIT``) so that oversized
bodies and zip bombs stay cheap. ``test_corpus_summary`` states the figure for the README.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, inspect, select, table
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.main import BODY_OVERHEAD_BYTES
from tests.conftest import RecordingPublisher, Tenant, make_tenant

PROBLEM = "application/problem+json"
UPLOAD_LIMIT = 256 * 1024
UNCOMPRESSED_LIMIT = 2 * 1024 * 1024
BODY_LIMIT = UPLOAD_LIMIT + BODY_OVERHEAD_BYTES
JSON_LIMIT = 512 * 1024
MLP_CONFIG = {"input_shape": [1, 8, 8], "hidden": [8], "num_classes": 10}
ST_DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}


# ----------------------------------------------------------------------------------------- payloads
class OpenForWriting:
    """Unpickling this calls ``open(path, "w")``: the marker file appears iff something unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def exploit(ctx: Context, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    return pickle.dumps(OpenForWriting(ctx.marker), protocol=protocol)


def torch_style_zip(ctx: Context) -> bytes:
    """What torch.save writes: a zip with the pickled object in ``archive/data.pkl``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", exploit(ctx, protocol=2))
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def mlp_state(**overrides: np.ndarray | None) -> dict[str, np.ndarray]:
    """A valid state_dict of ``MLP_CONFIG`` (numpy, float32); overrides replace or (None) drop keys."""
    state = {
        "layers.0.weight": np.full((8, 64), 0.01, dtype=np.float32),
        "layers.0.bias": np.zeros(8, dtype=np.float32),
        "head.weight": np.full((10, 8), 0.02, dtype=np.float32),
        "head.bias": np.zeros(10, dtype=np.float32),
    }
    for key, value in overrides.items():
        if value is None:
            state.pop(key.replace("__", "."))
        else:
            state[key.replace("__", ".")] = value
    return state


def safetensors_bytes(state: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save(state)


def raw_safetensors(header: Any, data: bytes, *, length: int | None = None) -> bytes:
    """A safetensors file with any header (lying offsets, dtypes, shapes) and any declared length."""
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(encoded) if length is None else length) + encoded + data


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def consistent_header(shapes: dict[str, list[int]], dtype: str = "F32") -> tuple[dict[str, Any], bytes]:
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * np.dtype(ST_DTYPES[dtype]).itemsize
        header[name] = entry(dtype, shape, offset, offset + size)
        offset += size
    return header, b"\0" * offset


MLP_SHAPES = {"layers.0.weight": [8, 64], "layers.0.bias": [8], "head.weight": [10, 8], "head.bias": [10]}


def lying_offsets(kind: str) -> bytes:
    header, data = consistent_header(MLP_SHAPES)
    if kind == "out-of-range":
        header["head.bias"]["data_offsets"] = [len(data) - 40, len(data) + 4000]
    elif kind == "overlap":
        header["head.weight"]["data_offsets"] = [0, 320]  # overlaps layers.0.weight
    elif kind == "size-vs-shape":
        header["layers.0.weight"]["shape"] = [16, 64]  # 4 KiB declared, 2 KiB of bytes
    elif kind == "dtype-vs-bytes":
        header["layers.0.weight"]["dtype"] = "F64"  # 8-byte items over 4-byte-item bytes
    return raw_safetensors(header, data)


def npz_bytes(compress: bool = False, **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def small_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.random((40, 1, 4, 4), dtype=np.float32),
        "y_train": np.arange(40) % 4,
        "x_test": rng.random((12, 1, 4, 4), dtype=np.float32),
        "y_test": np.arange(12) % 4,
    }


def npz_with(compress: bool = False, **overrides: np.ndarray) -> bytes:
    return npz_bytes(compress, **{**small_arrays(), **overrides})


def npz_object_array(ctx: Context) -> bytes:
    objects = np.empty(40, dtype=object)
    objects[:] = [OpenForWriting(ctx.marker)] * 40
    return npz_with(x_train=objects)


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_memory_bomb() -> bytes:
    """x_train's .npy header declares 10^12 x 64 floats (256 TB) over a few bytes of data."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 64)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    arrays = {f"{k}.npy": npy_bytes(v) for k, v in small_arrays().items()}
    arrays["x_train.npy"] = buffer.getvalue() + b"\0" * 64
    return zip_of(arrays)


def lying_central_directory() -> bytes:
    """A deflated x_train whose central directory understates its size (200 bytes for ~2.5 KiB)."""
    data = bytearray(npz_with(compress=True))
    start = data.find(b"PK\x01\x02")  # central-directory entries: signature, ..., size at +24, name at +46
    while start != -1:
        name_length = struct.unpack_from("<H", data, start + 28)[0]
        name = bytes(data[start + 46 : start + 46 + name_length])
        if name == b"x_train.npy":
            struct.pack_into("<I", data, start + 24, 200)  # uncompressed size
            break
        start = data.find(b"PK\x01\x02", start + 4)
    else:
        raise AssertionError("x_train.npy is not in the central directory")
    return bytes(data)


def many_members(count: int) -> bytes:
    return zip_of({f"a{i}.npy": npy_bytes(np.zeros(1)) for i in range(count)})


# ------------------------------------------------------------------------------------------ harness
@dataclass(frozen=True)
class Context:
    dataset: str
    model: str
    forget_set: str
    n_train: int
    marker: Path


@dataclass(frozen=True)
class Case:
    name: str
    category: str
    method: str
    path: str  # formatted with the Context, e.g. "/v1/jobs/{ctx.model}"
    status: int
    code: str
    detail: str  # a fragment the problem's detail must contain (case-insensitive)
    request: Callable[[Context], dict[str, Any]] = field(default=lambda ctx: {})
    scope: str = "submit"


def as_json(body: Any) -> Callable[[Context], dict[str, Any]]:
    return lambda ctx: {"json": body(ctx) if callable(body) else body}


def raw_json(body: Any, content_type: str = "application/json") -> Callable:
    """A body sent as is: bytes, text, or an object dumped by Python's json (which writes NaN and Infinity
    and escapes lone surrogates, none of which is valid JSON); ``body`` may be a callable of the Context."""

    def build(ctx: Context) -> dict[str, Any]:
        value = body(ctx) if callable(body) else body
        if not isinstance(value, str | bytes):
            value = json.dumps(value)
        content = value.encode() if isinstance(value, str) else value
        return {"content": content, "headers": {"Content-Type": content_type}}

    return build


def weights(payload: Callable[[Context], bytes], *, filename: str = "m.safetensors", **form: str) -> Callable:
    def build(ctx: Context) -> dict[str, Any]:
        data = {"architecture": "mlp", "config": json.dumps(MLP_CONFIG), "dataset_id": ctx.dataset, **form}
        return {"data": data, "files": {"weights": (filename, payload(ctx), "application/octet-stream")}}

    return build


def dataset_file(payload: Callable[[Context], bytes], filename: str = "d.npz", **form: str) -> Callable:
    return lambda ctx: {"data": form, "files": {"file": (filename, payload(ctx), "application/octet-stream")}}


def forget(spec: Any, **extra: Any) -> Callable:
    return as_json(
        lambda ctx: {"dataset_id": ctx.dataset, "spec": spec(ctx) if callable(spec) else spec, **extra}
    )


def train(**body: Any) -> Callable:
    return as_json(
        lambda ctx: {"kind": "train", "dataset_id": ctx.dataset, "architecture": "mlp", "seed": 1, **body}
    )


def unlearn(method: str = "ft", **params: Any) -> Callable:
    return as_json(
        lambda ctx: {
            "kind": "unlearn",
            "method": method,
            "model_id": ctx.model,
            "forget_set_id": ctx.forget_set,
            "params": params,
        }
    )


def chunked(size: int, content_type: str = "application/json") -> Callable:
    """A body streamed without Content-Length (chunked), so only counting it while reading can stop it."""

    def body() -> Iterator[bytes]:
        if content_type.startswith("multipart/"):
            yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="d.npz"\r\n\r\n'
        for _ in range(size // 65536 + 1):
            yield b" " * 65536

    return lambda ctx: {"content": body(), "headers": {"Content-Type": content_type}}


def recipe(**fields: Any) -> dict[str, Any]:
    return {"recipe": {"epochs": 2, **fields}}


FS, JOBS, MODELS, UPLOAD = "/v1/forget-sets", "/v1/jobs", "/v1/models", "/v1/datasets/upload"
NOBODY = "00000000-0000-4000-8000-000000000000"  # no resource has this id
NAN = math.nan

# fmt: off
CASES: list[Case] = [
    # --- pickles with a code-execution payload: rejected from their bytes, never unpickled
    Case("pickle-weights-proto5", "pickle", "POST", MODELS, 422, "pickle-rejected", "never loads pickles",
         weights(exploit)),
    Case("pickle-weights-proto0", "pickle", "POST", MODELS, 422, "pickle-rejected", "python pickle",
         weights(lambda ctx: exploit(ctx, protocol=0))),
    Case("pickle-weights-torch-zip", "pickle", "POST", MODELS, 422, "pickle-rejected", "torch.save",
         weights(torch_style_zip, filename="model.pt")),
    Case("pickle-dataset-raw", "pickle", "POST", UPLOAD, 422, "pickle-rejected", "never loads pickles",
         dataset_file(exploit)),
    Case("pickle-dataset-npz-object-array", "pickle", "POST", UPLOAD, 422, "pickle-rejected", "dtype object",
         dataset_file(npz_object_array)),
    Case("pickle-dataset-npz-pkl-member", "pickle", "POST", UPLOAD, 422, "pickle-rejected", "pickled members",
         dataset_file(lambda ctx: zip_of({"x_train.pkl": exploit(ctx), "y.npy": npy_bytes(np.ones(3))}))),
    # --- zip bombs and memory bombs
    Case("zip-bomb-declared-size", "zip bomb", "POST", UPLOAD, 422, "zip-bomb", "bytes of uncompressed data",
         dataset_file(lambda ctx: npz_with(True, x_train=np.zeros((40, 1, 128, 128), np.float32)))),
    Case("zip-bomb-ratio", "zip bomb", "POST", UPLOAD, 422, "zip-bomb", "more than 200:1",
         dataset_file(lambda ctx: npz_with(True, x_train=np.zeros((40, 1, 96, 96), np.float32)))),
    Case("zip-bomb-entry-count", "zip bomb", "POST", UPLOAD, 422, "zip-bomb", "entries",
         dataset_file(lambda ctx: many_members(100))),
    Case("npy-header-memory-bomb", "zip bomb", "POST", UPLOAD, 422, "npz-structure", "declares shape",
         dataset_file(lambda ctx: npy_memory_bomb())),
    Case("zip-lying-central-directory", "zip bomb", "POST", UPLOAD, 422, "npz-structure", "x_train",
         dataset_file(lambda ctx: lying_central_directory())),
    # --- oversized bodies and uploads (limits from Settings)
    # JSON bodies have their own, smaller limit than multipart uploads (LETHE_MAX_JSON_BODY_BYTES).
    Case("body-over-limit-content-length", "oversized", "POST", JOBS, 413, "payload-too-large",
         f"limit of {JSON_LIMIT} bytes", raw_json(" " * (JSON_LIMIT + 1))),
    Case("body-over-limit-chunked", "oversized", "POST", JOBS, 413, "payload-too-large",
         f"limit of {JSON_LIMIT} bytes", chunked(JSON_LIMIT + 1)),
    Case("upload-over-limit-chunked", "oversized", "POST", UPLOAD, 413, "payload-too-large",
         f"limit of {BODY_LIMIT} bytes", chunked(BODY_LIMIT + 1, "multipart/form-data; boundary=x")),
    Case("weights-over-upload-limit", "oversized", "POST", MODELS, 413, "upload-too-large",
         f"limit of {UPLOAD_LIMIT} bytes", weights(lambda ctx: b"\0" * (UPLOAD_LIMIT + 1))),
    Case("dataset-over-upload-limit", "oversized", "POST", UPLOAD, 413, "upload-too-large",
         f"limit of {UPLOAD_LIMIT} bytes", dataset_file(lambda ctx: b"PK\x03\x04" + b"\0" * UPLOAD_LIMIT)),
    Case("config-form-field-too-long", "oversized", "POST", MODELS, 422, "validation-error", "config",
         weights(lambda ctx: b"x", config=" " * 100_001)),
    # --- safetensors with lying headers, bad values, wrong state_dicts
    Case("st-header-length-beyond-file", "safetensors", "POST", MODELS, 422, "safetensors-header",
         "truncated", weights(lambda ctx: raw_safetensors({}, b"", length=10_000) + b"{}" * 10)),
    Case("st-header-length-huge", "safetensors", "POST", MODELS, 422, "safetensors-header",
         "above the", weights(lambda ctx: raw_safetensors(b"{}", b"", length=2**63))),
    Case("st-header-not-json", "safetensors", "POST", MODELS, 422, "safetensors-header", "not valid json",
         weights(lambda ctx: raw_safetensors(b'{"a": [1, 2', b""))),
    Case("st-header-duplicate-key", "safetensors", "POST", MODELS, 422, "safetensors-header", "than once",
         weights(lambda ctx: raw_safetensors(
             b'{"head.bias": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
             b' "head.bias": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4))),
    Case("st-offsets-out-of-range", "safetensors", "POST", MODELS, 422, "safetensors-offsets", "head.bias",
         weights(lambda ctx: lying_offsets("out-of-range"))),
    Case("st-offsets-overlap", "safetensors", "POST", MODELS, 422, "safetensors-offsets", "overlap",
         weights(lambda ctx: lying_offsets("overlap"))),
    Case("st-shape-vs-byte-length", "safetensors", "POST", MODELS, 422, "safetensors-offsets",
         "layers.0.weight", weights(lambda ctx: lying_offsets("size-vs-shape"))),
    Case("st-dtype-vs-byte-length", "safetensors", "POST", MODELS, 422, "safetensors-offsets",
         "layers.0.weight", weights(lambda ctx: lying_offsets("dtype-vs-bytes"))),
    Case("st-negative-dimension", "safetensors", "POST", MODELS, 422, "safetensors-header", "shape",
         weights(lambda ctx: raw_safetensors({"head.bias": entry("F32", [-1], 0, 4)}, b"\0" * 4))),
    Case("st-dtype-not-allowed", "safetensors", "POST", MODELS, 422, "dtype-not-allowed", "F8_E4M3",
         weights(lambda ctx: raw_safetensors({"head.bias": entry("F8_E4M3", [4], 0, 4)}, b"\0" * 4))),
    Case("st-integer-weights", "safetensors", "POST", MODELS, 422, "dtype-mismatch", "floating-point",
         weights(lambda ctx: safetensors_bytes(mlp_state(head__bias=np.zeros(10, dtype=np.int64))))),
    Case("st-nan-weights", "non-finite", "POST", MODELS, 422, "non-finite-values", "nan",
         weights(lambda ctx: safetensors_bytes(mlp_state(head__bias=np.full(10, np.nan, np.float32))))),
    Case("st-inf-weights", "non-finite", "POST", MODELS, 422, "non-finite-values", "infinite",
         weights(lambda ctx: safetensors_bytes(mlp_state(head__bias=np.full(10, -np.inf, np.float32))))),
    Case("st-missing-key", "safetensors", "POST", MODELS, 422, "missing-keys", "head.bias",
         weights(lambda ctx: safetensors_bytes(mlp_state(head__bias=None)))),
    Case("st-unexpected-key", "safetensors", "POST", MODELS, 422, "unexpected-keys", "backdoor",
         weights(lambda ctx: safetensors_bytes(mlp_state(backdoor=np.zeros(3, np.float32))))),
    Case("st-wrong-shape", "safetensors", "POST", MODELS, 422, "shape-mismatch", "head.weight",
         weights(lambda ctx: safetensors_bytes(mlp_state(head__weight=np.zeros((9, 8), np.float32))))),
    Case("st-empty-file", "safetensors", "POST", MODELS, 422, "empty-upload", "empty",
         weights(lambda ctx: b"")),
    Case("st-random-bytes", "safetensors", "POST", MODELS, 422, "safetensors-header", "header length",
         weights(lambda ctx: bytes(range(256)) * 4)),
    Case("st-npz-as-weights", "safetensors", "POST", MODELS, 415, "unsupported-format", "zip archive",
         weights(lambda ctx: npz_with())),
    # --- wrong architecture configs
    Case("arch-unknown", "architecture", "POST", MODELS, 422, "unknown-architecture", "gpt5",
         weights(lambda ctx: safetensors_bytes(mlp_state()), architecture="gpt5")),
    Case("arch-config-not-json", "architecture", "POST", MODELS, 422, "invalid-json", "not valid json",
         weights(lambda ctx: safetensors_bytes(mlp_state()), config="{hidden: [8]")),
    Case("arch-config-not-object", "architecture", "POST", MODELS, 422, "invalid-architecture-config",
         "json object", weights(lambda ctx: safetensors_bytes(mlp_state()), config="[8, 8]")),
    Case("arch-config-invalid-values", "architecture", "POST", MODELS, 422, "invalid-architecture-config",
         "hidden.0", weights(lambda ctx: safetensors_bytes(mlp_state()), config='{"hidden": [-8]}')),
    Case("arch-config-vs-dataset", "architecture", "POST", MODELS, 422, "architecture-dataset-mismatch",
         "num_classes", weights(lambda ctx: safetensors_bytes(mlp_state()),
                                config=json.dumps({**MLP_CONFIG, "num_classes": 3}))),
    Case("arch-train-parameter-budget", "architecture", "POST", JOBS, 422, "invalid-architecture-config",
         "parameters", train(arch_config={"hidden": [16384] * 16})),
    Case("arch-train-unknown", "architecture", "POST", JOBS, 422, "unknown-architecture", "available",
         train(architecture="transformer-xxl")),
    # --- forget-set indices, classes and fractions
    Case("indices-out-of-range", "forget set", "POST", FS, 422, "index-out-of-range", "out of range",
         forget(lambda ctx: {"kind": "indices", "indices": [0, ctx.n_train]})),
    Case("indices-negative", "forget set", "POST", FS, 422, "index-out-of-range", "[-3]",
         forget({"kind": "indices", "indices": [-3, 1]})),
    Case("indices-duplicate", "forget set", "POST", FS, 422, "duplicate-indices", "list each sample once",
         forget({"kind": "indices", "indices": [4, 2, 4]})),
    Case("indices-float", "forget set", "POST", FS, 422, "validation-error", "valid integer",
         forget({"kind": "indices", "indices": [1.5]})),
    Case("indices-string", "forget set", "POST", FS, 422, "validation-error", "valid integer",
         forget({"kind": "indices", "indices": ["7"]})),
    Case("indices-boolean", "forget set", "POST", FS, 422, "validation-error", "valid integer",
         forget({"kind": "indices", "indices": [True]})),
    Case("indices-beyond-int64", "forget set", "POST", FS, 422, "validation-error", "less than or equal",
         forget({"kind": "indices", "indices": [2**70]})),
    Case("indices-empty", "forget set", "POST", FS, 422, "empty-forget-set", "at least one index",
         forget({"kind": "indices", "indices": []})),
    Case("indices-whole-dataset", "forget set", "POST", FS, 422, "whole-dataset", "nothing would remain",
         forget(lambda ctx: {"kind": "indices", "indices": list(range(ctx.n_train))})),
    Case("class-unknown", "forget set", "POST", FS, 422, "unknown-class", "does not occur",
         forget({"kind": "class", "class": 10})),
    Case("class-negative", "forget set", "POST", FS, 422, "validation-error", "greater than or equal to 0",
         forget({"kind": "class", "class": -1})),
    Case("random-fraction-whole", "forget set", "POST", FS, 422, "validation-error", "less than 1",
         forget({"kind": "random", "fraction": 1.0})),
    Case("random-fraction-nan", "forget set", "POST", FS, 422, "validation-error", "finite number",
         raw_json(lambda ctx: {"dataset_id": ctx.dataset, "spec": {"kind": "random", "fraction": NAN}})),
    Case("random-fraction-tiny", "forget set", "POST", FS, 422, "empty-forget-set", "selects nothing",
         forget({"kind": "random", "fraction": 1e-9})),
    Case("target-range-on-classification", "forget set", "POST", FS, 422, "task-mismatch", "regression",
         forget({"kind": "target_range", "low": 0, "high": 1})),
    Case("spec-unknown-kind", "forget set", "POST", FS, 422, "validation-error", "kind",
         forget({"kind": "everything"})),
    Case("forget-set-unknown-dataset", "forget set", "POST", FS, 404, "dataset-not-found", "not found",
         as_json({"dataset_id": NOBODY, "spec": {"kind": "class", "class": 1}})),
    # --- absurd hyperparameters and job specs
    Case("epochs-huge", "hyperparameters", "POST", JOBS, 422, "invalid-params", "params.recipe.epochs",
         train(params=recipe(epochs=10**9))),
    Case("epochs-zero", "hyperparameters", "POST", JOBS, 422, "invalid-params", "params.recipe.epochs",
         train(params=recipe(epochs=0))),
    Case("lr-nan", "hyperparameters", "POST", JOBS, 422, "invalid-params",
         "params.lr: input should be a finite",
         raw_json(lambda ctx: unlearn(lr=NAN)(ctx)["json"])),
    Case("lr-infinite", "hyperparameters", "POST", JOBS, 422, "invalid-params", "params.recipe.lr",
         raw_json(lambda ctx: train(params=recipe(lr=math.inf))(ctx)["json"])),
    Case("lr-negative", "hyperparameters", "POST", JOBS, 422, "invalid-params", "params.lr",
         unlearn(lr=-0.1)),
    Case("batch-size-zero", "hyperparameters", "POST", JOBS, 422, "invalid-params", "params.batch_size",
         unlearn(batch_size=0)),
    Case("milestones-not-increasing", "hyperparameters", "POST", JOBS, 422, "invalid-params", "increasing",
         train(params=recipe(schedule="multistep", milestones=[0.8, 0.2]))),
    Case("params-unknown-field", "hyperparameters", "POST", JOBS, 422, "invalid-params", "extra inputs",
         unlearn(learning_rate=0.1)),
    Case("method-unknown", "hyperparameters", "POST", JOBS, 422, "unknown-method", "available",
         unlearn(method="forget_everything")),
    Case("job-kind-unknown", "hyperparameters", "POST", JOBS, 422, "validation-error", "body.kind",
         as_json({"kind": "mine_bitcoin"})),
    Case("seed-negative", "hyperparameters", "POST", JOBS, 422, "validation-error", "body.seed",
         train(seed=-1)),
    Case("seed-beyond-int32", "hyperparameters", "POST", JOBS, 422, "validation-error", "body.seed",
         train(seed=2**40)),
    Case("device-unknown", "hyperparameters", "POST", JOBS, 422, "validation-error", "body.device",
         train(device="tpu")),
    Case("evaluate-with-params", "hyperparameters", "POST", JOBS, 422, "invalid-params", "take no params",
         as_json(lambda ctx: {"kind": "evaluate", "model_id": ctx.model, "forget_set_id": ctx.forget_set,
                              "params": {"epochs": 3}})),
    Case("job-unknown-model", "hyperparameters", "POST", JOBS, 404, "model-not-found", "not found",
         as_json(lambda ctx: {"kind": "evaluate", "model_id": NOBODY,
                              "forget_set_id": ctx.forget_set})),
    Case("campaign-duplicate-seeds", "hyperparameters", "POST", "/v1/campaigns", 422, "validation-error",
         "seeds must be distinct", as_json(lambda ctx: {
             "name": "c", "model_id": ctx.model, "methods": [{"method": "ft"}],
             "forget_sets": [{"forget_set_id": ctx.forget_set}], "seeds": [1, 1]})),
    Case("idempotency-key-too-long", "hyperparameters", "POST", JOBS, 422, "validation-error",
         "idempotency-key", lambda ctx: {**train()(ctx), "headers": {"Idempotency-Key": "k" * 256}}),
    # --- malformed JSON and wrong content types
    Case("json-truncated", "malformed", "POST", JOBS, 422, "validation-error", "json decode error",
         raw_json('{"kind": "train", "dataset_id": ')),
    Case("json-array-body", "malformed", "POST", JOBS, 422, "validation-error", "valid dictionary",
         raw_json('[{"kind": "train"}]')),
    Case("json-empty-body", "malformed", "POST", JOBS, 422, "validation-error", "field required",
         raw_json("")),
    Case("json-deeply-nested", "malformed", "POST", JOBS, 400, "bad-request", "error parsing the body",
         raw_json('{"kind": "train", "params": ' + "[" * 100_000 + "]" * 100_000 + "}")),
    Case("json-invalid-utf8", "malformed", "POST", FS, 400, "bad-request", "error parsing the body",
         raw_json(b'{"name": "\xff\xfe", "spec": {}}')),
    Case("json-extra-field", "malformed", "POST", FS, 422, "validation-error", "extra inputs",
         forget({"kind": "class", "class": 1}, tenant_id="someone-else")),
    Case("content-type-text-plain", "content type", "POST", FS, 415, "unsupported-media-type",
         "application/json", raw_json(lambda ctx: json.dumps({"dataset_id": ctx.dataset}), "text/plain")),
    Case("content-type-missing", "content type", "POST", JOBS, 415, "unsupported-media-type",
         "no content-type", lambda ctx: {"content": b'{"kind": "train"}'}),
    Case("content-type-multipart-to-json-route", "content type", "POST", JOBS, 415, "unsupported-media-type",
         "application/json", lambda ctx: {"files": {"kind": (None, "train")}}),
    Case("content-type-json-to-upload-route", "content type", "POST", MODELS, 422, "validation-error",
         "body.weights: field required", as_json({"architecture": "mlp"})),
    Case("npz-not-a-zip", "content type", "POST", UPLOAD, 422, "npz-structure", "not an .npz",
         dataset_file(lambda ctx: b"x_train,y_train\n1,2\n")),
    # --- names: control characters, invalid unicode, length
    Case("name-too-long", "names", "POST", FS, 422, "validation-error", "at most 200 characters",
         forget({"kind": "class", "class": 1}, name="n" * 201)),
    Case("name-nul-byte", "names", "POST", FS, 422, "validation-error", "body.name",
         forget({"kind": "class", "class": 1}, name="evil\x00name")),
    Case("name-terminal-escape", "names", "POST", "/v1/datasets", 422, "validation-error", "body.name",
         as_json({"builtin": "digits", "name": "\x1b[31mred\x1b[0m"})),
    Case("name-lone-surrogate", "names", "POST", FS, 422, "validation-error", "unicode",
         raw_json(lambda ctx: {"dataset_id": ctx.dataset, "name": "\ud800",
                               "spec": {"kind": "random", "fraction": 0.1}})),
    Case("name-newline-in-model-form", "names", "POST", MODELS, 422, "validation-error", "name",
         weights(lambda ctx: safetensors_bytes(mlp_state()), name="line\nbreak")),
    Case("name-c1-control-in-upload-form", "names", "POST", UPLOAD, 422, "validation-error", "name",
         dataset_file(lambda ctx: npz_with(), name="csv\x85injection")),
    Case("key-name-control-chars", "names", "POST", "/v1/keys", 422, "validation-error", "body.name",
         as_json({"name": "tab\there", "scopes": ["read"]}), scope="admin"),
    # Bidi_Control characters reorder how a name is displayed ("model\u202egpj.exe" shows as "modelexe.jpg").
    Case("name-bidi-override-forget-set", "names", "POST", FS, 422, "validation-error", "body.name",
         forget({"kind": "class", "class": 1}, name="model\u202egpj.exe")),
    Case("name-bidi-isolate-builtin-dataset", "names", "POST", "/v1/datasets", 422, "validation-error",
         "body.name", as_json({"builtin": "digits", "name": "a\u2067b\u2069"})),
    Case("name-bidi-mark-in-upload-form", "names", "POST", UPLOAD, 422, "validation-error", "name",
         dataset_file(lambda ctx: npz_with(), name="rtl\u200fmark")),
    Case("name-bidi-embedding-in-model-form", "names", "POST", MODELS, 422, "validation-error", "name",
         weights(lambda ctx: safetensors_bytes(mlp_state()), name="x\u202bembedded\u202c")),
    Case("name-arabic-letter-mark-campaign", "names", "POST", "/v1/campaigns", 422, "validation-error",
         "body.name", as_json(lambda ctx: {"name": "c\u061c", "model_id": ctx.model,
                                           "methods": [{"method": "ft"}],
                                           "forget_sets": [{"forget_set_id": ctx.forget_set}],
                                           "seeds": [1]})),
    Case("tenant-name-bidi", "names", "POST", "/v1/keys", 422, "validation-error", "body.name",
         as_json({"name": "k\u202d", "scopes": ["read"]}), scope="admin"),
    Case("campaign-label-too-long", "names", "POST", "/v1/campaigns", 422, "validation-error", "label",
         as_json(lambda ctx: {"name": "c", "model_id": ctx.model,
                              "methods": [{"method": "ft", "label": "x" * 101}],
                              "forget_sets": [{"forget_set_id": ctx.forget_set}], "seeds": [1]})),
    # --- identifiers, pagination, credentials
    Case("path-traversal", "identifiers", "GET", "/v1/models/../../etc/passwd", 404, "not-found", "not"),
    Case("path-id-malformed-uuid", "identifiers", "GET", "/v1/jobs/1234-not-a-uuid", 422, "validation-error",
         "path.job_id", scope="read"),
    Case("cursor-garbage", "identifiers", "GET", "/v1/jobs?cursor=%25%25%25", 400, "invalid-cursor",
         "next_cursor", scope="read"),
    Case("cursor-wrong-types", "identifiers", "GET", "/v1/jobs?cursor=WzEsIDJd", 400, "invalid-cursor",
         "next_cursor", scope="read"),
    Case("limit-zero", "identifiers", "GET", "/v1/jobs?limit=0", 422, "validation-error", "query.limit",
         scope="read"),
    Case("api-key-missing", "credentials", "GET", "/v1/jobs", 401, "missing-api-key", "missing api key",
         scope="none"),
    Case("api-key-malformed", "credentials", "GET", "/v1/jobs", 401, "invalid-api-key", "invalid",
         lambda ctx: {"headers": {"Authorization": "Bearer lk_0000000000000000_forged"}}, scope="none"),
    Case("api-key-read-scope-mutates", "credentials", "POST", FS, 403, "insufficient-scope", "submit",
         forget({"kind": "class", "class": 1}), scope="read"),
]

CATEGORIES = {
    "pickle", "zip bomb", "oversized", "safetensors", "non-finite", "architecture", "forget set",
    "hyperparameters", "malformed", "content type", "names", "identifiers", "credentials",
}
# fmt: on
RESULTS: dict[str, int] = {}


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def corpus_settings(migrated: Settings) -> Settings:
    return migrated.model_copy(
        update={
            "max_upload_bytes": UPLOAD_LIMIT,
            "max_dataset_uncompressed_bytes": UNCOMPRESSED_LIMIT,
            "max_json_body_bytes": JSON_LIMIT,
        }
    )


@pytest.fixture(scope="module")
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture(scope="module")
def client(corpus_settings: Settings, publisher: RecordingPublisher) -> Iterator[TestClient]:
    from app.main import create_app

    app = create_app(corpus_settings, publisher=publisher)
    # A 500 must come back as a response the test can report, not as an exception in the test.
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def owner(sessions: sessionmaker[Session], migrated: Settings) -> Tenant:
    return make_tenant(sessions, migrated)


@pytest.fixture(scope="module")
def context(client: TestClient, owner: Tenant, tmp_path_factory: pytest.TempPathFactory) -> Context:
    headers = owner.headers("submit")
    dataset = client.post("/v1/datasets", json={"builtin": "digits"}, headers=headers).json()
    model = client.post(
        "/v1/models",
        data={"architecture": "mlp", "config": json.dumps(MLP_CONFIG), "dataset_id": dataset["id"]},
        files={"weights": ("m.safetensors", safetensors_bytes(mlp_state()))},
        headers=headers,
    )
    assert model.status_code == 201, model.text
    forget_set = client.post(
        FS, json={"dataset_id": dataset["id"], "spec": {"kind": "class", "class": 1}}, headers=headers
    ).json()
    marker = tmp_path_factory.mktemp("corpus") / "code-was-executed"
    return Context(dataset["id"], model.json()["id"], forget_set["id"], dataset["n_train"], marker)


@dataclass(frozen=True)
class Snapshot:
    rows: dict[str, int]
    artifacts: frozenset[str]
    published: int


def snapshot(sessions: sessionmaker[Session], artifacts: Path, publisher: RecordingPublisher) -> Snapshot:
    with sessions() as session:
        names = inspect(session.get_bind()).get_table_names()
        rows = {name: session.scalar(select(func.count()).select_from(table(name))) or 0 for name in names}
    paths = (
        frozenset(str(p.relative_to(artifacts)) for p in artifacts.rglob("*"))
        if artifacts.exists()
        else frozenset()
    )
    return Snapshot(rows, paths, len(publisher.published))


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(
    case: Case,
    client: TestClient,
    owner: Tenant,
    context: Context,
    sessions: sessionmaker[Session],
    corpus_settings: Settings,
    publisher: RecordingPublisher,
) -> None:
    request = case.request(context)
    headers = {} if case.scope == "none" else owner.headers(case.scope)
    headers.update(request.pop("headers", {}))
    before = snapshot(sessions, corpus_settings.artifacts, publisher)

    response = client.request(case.method, case.path.format(ctx=context), headers=headers, **request)
    RESULTS[case.name] = response.status_code

    assert response.status_code < 500, f"server error on {case.name}: {response.text}"
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers["content-type"]
    body = response.json()
    for key in ("type", "title", "status", "detail", "code"):
        assert body.get(key), f"problem without {key!r}: {body}"
    assert body["status"] == case.status and body["type"].endswith("/" + body["code"])
    assert body["code"] == case.code, body
    assert case.detail.lower() in body["detail"].lower(), body["detail"]
    assert not context.marker.exists(), "a pickle payload was executed"
    after = snapshot(sessions, corpus_settings.artifacts, publisher)
    assert after.rows == before.rows, "rows were persisted"
    assert after.artifacts == before.artifacts, sorted(after.artifacts ^ before.artifacts)
    assert after.published == before.published, "a job was published"


def test_payloads_do_execute_when_unpickled(tmp_path: Path) -> None:
    """The control for "no code executed": each pickle payload of the corpus, once unpickled, does create
    its marker file, so a marker that never appears means the server never unpickled it."""
    loaders: dict[str, Callable[[Context], object]] = {
        "raw-pickle": lambda ctx: pickle.loads(exploit(ctx)),
        "protocol-0": lambda ctx: pickle.loads(exploit(ctx, protocol=0)),
        "torch-zip": lambda ctx: pickle.loads(
            zipfile.ZipFile(io.BytesIO(torch_style_zip(ctx))).read("archive/data.pkl")
        ),
        "npz-object-array": lambda ctx: np.load(io.BytesIO(npz_object_array(ctx)), allow_pickle=True)[
            "x_train"
        ],
    }
    for name, load in loaders.items():
        ctx = Context("", "", "", 0, tmp_path / f"{name}-ran")
        load(ctx)
        assert ctx.marker.exists(), name


def test_valid_unicode_names_are_accepted(client: TestClient, owner: Tenant, context: Context) -> None:
    """The control: printable unicode is a fine name; only control characters are refused."""
    name = "Données d'entraînement — 数据集 🚀"
    response = client.post(
        FS,
        json={"dataset_id": context.dataset, "name": name, "spec": {"kind": "class", "class": 2}},
        headers=owner.headers("submit"),
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == name


def test_upload_file_name_is_sanitised(client: TestClient, owner: Tenant) -> None:
    """A dataset named after its file keeps only printable characters and at most 200 of them."""
    response = client.post(
        UPLOAD,
        files={"file": ("\x1b[2J" + "d" * 300 + ".npz", npz_with(), "application/octet-stream")},
        headers=owner.headers("submit"),
    )
    assert response.status_code in (200, 201), response.text
    name = response.json()["name"]
    assert name.isprintable() and 0 < len(name) <= 200


def test_corpus_summary() -> None:
    """At least 40 cases over every category, uniquely named; of those run here, none got a 5xx."""
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    assert len(CASES) >= 40
    assert {case.category for case in CASES} == CATEGORIES
    assert all(400 <= case.status < 500 for case in CASES)
    server_errors = sorted(name for name, status in RESULTS.items() if status >= 500)
    assert not server_errors, server_errors
    if len(RESULTS) == len(CASES):
        print(f"\nbad-input corpus: {len(CASES)} cases tried, {len(server_errors)} server errors")
