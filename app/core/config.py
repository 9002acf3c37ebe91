"""Every setting of the service, in one pydantic-settings class (env prefix ``LETHE_``)."""

from __future__ import annotations

import os
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_KEY_PEPPER = "lethe-embedded-pepper"


class Profile(StrEnum):
    embedded = "embedded"
    production = "production"


class Settings(BaseSettings):
    """Service settings.

    ``embedded`` (default) needs no servers: the app DB is a SQLite file, Celery talks to a second
    SQLite file through kombu's SQLAlchemy transport and artifacts live in a local directory.
    ``production`` requires a Postgres URL and a Redis broker.
    """

    model_config = SettingsConfigDict(
        env_prefix="LETHE_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    profile: Profile = Profile.embedded
    home: Path = Field(Path("var"), description="Directory for the embedded profile's files.")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the app DB.")
    broker_url: str | None = Field(None, description="Celery broker URL.")
    artifact_backend: str = Field(
        "local",
        description="Artifact store backend, a name registered in app.storage.backends.ARTIFACT_BACKENDS.",
    )
    artifact_root: Path | None = Field(None, description="Directory of the local artifact store.")
    # The S3-compatible store (LETHE_ARTIFACT_BACKEND=s3, app/storage/s3.py): workers on several machines.
    s3_bucket: str | None = Field(None, description="Bucket of the s3 artifact backend (it must exist).")
    s3_prefix: str = Field(
        "", description="Key prefix inside the bucket ('' or ending in '/'), to share a bucket with others."
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 API endpoint (MinIO, Ceph, R2, ...: http(s)://host:port); unset: AWS."
    )
    s3_region: str | None = Field(None, description="Region of the bucket (AWS); unset: boto3's default.")
    s3_access_key_id: str | None = Field(
        None, description="Access key; unset: boto3's own chain (AWS_* variables, ~/.aws, instance role)."
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="Secret of s3_access_key_id.")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "path", description="'path' (bucket in the URL path) works with every S3-compatible server."
    )
    s3_max_attempts: int = Field(
        8, ge=1, description="Attempts per S3 request (capped exponential backoff with jitter between them)."
    )
    s3_connect_timeout_seconds: float = Field(10.0, gt=0)
    s3_read_timeout_seconds: float = Field(60.0, gt=0)
    s3_part_bytes: int = Field(
        16 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        description="Multipart upload part size (S3's minimum is 5 MiB): the memory one upload holds.",
    )
    s3_staging_dir: Path | None = Field(
        None, description="Local directory of files staged for upload (default <home>/staging)."
    )
    worker_host: str | None = Field(
        None,
        description="This machine's name in the worker id jobs record (<host>:<pid>); default the hostname. "
        "Containers get random hostnames: name each GPU machine so a job row says where it ran.",
    )
    device: str = Field("auto", description="'auto' picks cuda when available, else cpu.")
    data_root: Path | None = Field(
        None,
        description="Operator directory of datasets in torchvision's on-disk formats (CIFAR-10/100, SVHN, "
        "MNIST, Fashion-MNIST, ImageFolder) that tenants register by format and relative path "
        "(POST /v1/datasets/data-root); read by the API at registration and by workers at each load, never "
        "written. Mount it at this same path for the API and every GPU worker. Unset: that source is off.",
    )

    # Jobs: the DB lease is the only guard against double execution.
    lease_seconds: float = Field(60.0, gt=0, description="A running job's lease; heartbeats extend it.")
    heartbeat_seconds: float = Field(2.0, gt=0, description="Minimum interval between DB heartbeats.")
    max_attempts: int = Field(3, ge=1, description="A job whose lease expired this often is failed.")
    oom_retry_half_batch: bool = Field(
        False,
        description="A job that runs out of device memory is retried once, in the same attempt, with half "
        "its batch size (recorded in its result; the job is then left out of the result cache). Off: it "
        "fails with device-out-of-memory.",
    )
    reaper_interval_seconds: float = Field(10.0, gt=0)
    task_soft_time_limit: int = Field(6 * 3600, gt=0)
    task_time_limit: int = Field(6 * 3600 + 300, gt=0)
    # Redis redelivers unacked messages after this: it must exceed the hard limit or a running job
    # is delivered a second time while it still runs.
    redis_visibility_timeout: int = Field(8 * 3600, gt=0)
    broker_polling_interval: float = Field(0.1, gt=0, description="Embedded broker polling interval.")

    # Uploads.
    max_upload_bytes: int = Field(256 * 1024 * 1024, gt=0)
    max_json_body_bytes: int = Field(
        1024 * 1024,
        gt=0,
        description="Limit of every request body that is not multipart/form-data (JSON bodies): counted "
        "while it is read, so a chunked body is refused (413 payload-too-large) as soon as it crosses it. "
        "1 MiB holds an indices forget set of about 120,000 six-digit indices; raise it for larger ones.",
    )
    max_dataset_uncompressed_bytes: int = Field(
        1024 * 1024 * 1024,
        gt=0,
        description="Cap on an npz dataset's declared uncompressed size and on its decoded size (labels as "
        "int64, features as stored), both checked from the archive's headers before any member is decoded.",
    )
    max_chunked_upload_bytes: int = Field(
        16 * 1024**3,
        gt=0,
        description="Largest file a resumable chunked upload (POST /v1/uploads) may declare; each part is at "
        "most max_upload_bytes (the single-request limit).",
    )
    max_incomplete_upload_bytes_per_tenant: int = Field(
        16 * 1024**3,
        ge=0,
        description="Bytes a tenant may hold in chunked uploads not yet completed (received parts), checked "
        "on every part (413 incomplete-uploads-quota-exceeded); expired uploads free theirs.",
    )
    max_open_uploads_per_tenant: int = Field(
        16, ge=1, description="Chunked uploads a tenant may have open at once (429 too-many-open-uploads)."
    )
    upload_expiry_seconds: float = Field(
        24 * 3600.0,
        gt=0,
        description="An open chunked upload that receives no part for this long expires: the retention "
        "sweep deletes it and its parts, and it answers 404.",
    )

    # Quotas (app.services.ops.quotas): every refusal is problem+json with a stable code.
    max_active_jobs_per_tenant: int | None = Field(
        100,
        ge=1,
        description="Queued + running jobs a tenant may have; POST /v1/jobs beyond it answers 429. "
        "Campaign cells count towards it. Unset: no limit.",
    )
    max_job_epochs: int = Field(
        1000,
        ge=1,
        description="Ceiling on every epochs field of a job's params (epochs, finetune_epochs, lower_epochs, "
        "...) and on an inherited recipe; beyond it a submission answers 422 epochs-over-limit.",
    )
    max_job_steps: int = Field(
        1_000_000,
        ge=1,
        description="Ceiling on every steps field of a job's params (generative training, SFD and sampling "
        "steps) and on an inherited recipe; beyond it a submission answers 422 steps-over-limit.",
    )
    storage_quota_bytes_per_tenant: int | None = Field(
        10 * 1024**3,
        ge=0,
        description="Bytes of stored datasets, models and audit shadow models a tenant may own (the rows' "
        "size_bytes, each stored file once; a dataset counts as stored: decompressed, uint8 images as uint8, "
        "other features as float32; a chunked upload's part is checked with the received bytes of its"
        " open uploads added). Uploads beyond it and jobs whose output model would not fit answer 413 "
        "storage-quota-exceeded. Unset: no limit.",
    )
    job_time_budget_seconds: float | None = Field(
        None,
        gt=0,
        description="Wall-clock budget of a running attempt; the reaper fails a job past it "
        "(time-budget-exceeded) and its worker stops at the next heartbeat. Unset: only the Celery "
        "soft time limit (task_soft_time_limit) applies.",
    )

    # Data lifecycle (app.services.data.deletion, app.services.data.retention, app.services.data.artifacts).
    retention_days_intermediate: float | None = Field(
        None,
        ge=0,
        description="Purge regenerable intermediates older than this: audit shadow models unused for "
        "this long, epoch checkpoints and per-example arrays/scores of jobs that ended this long ago. "
        "Unset: keep them.",
    )
    retention_interval_seconds: float = Field(3600.0, gt=0, description="How often retention runs.")
    orphan_grace_seconds: float = Field(
        3600.0,
        ge=0,
        description="The orphan sweep deletes artifact files no row references once they are this old "
        "(younger files may belong to a write whose row is not committed yet).",
    )
    orphan_sweep_interval_seconds: float = Field(3600.0, gt=0, description="How often the sweep runs.")

    # API process.
    api_concurrency: int = Field(
        8,
        ge=1,
        le=1000,
        description="Threads per API process for blocking work (the anyio limiter) and, on Postgres, the "
        "connections of its pool (as many again may overflow: a request can hold two). Sized together so "
        "that a thread that has a connection slot never waits for one held by a request without a thread.",
    )

    # Auth.
    bootstrap_key_file: Path | None = Field(None, description="Where the embedded admin key is written.")
    key_pepper: str = Field(DEFAULT_KEY_PEPPER, description="HMAC pepper for API-key hashes.")
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token Prometheus sends to GET /metrics (counts across all tenants). Unset: "
        "/metrics answers 404.",
    )

    # Observability (app/core/logs.py, app/api/observability.py, app/services/ops/telemetry.py).
    log_format: Literal["json", "text"] = Field(
        "json", description="Log lines: one JSON object each (request_id, tenant, job_id, ...), or text."
    )
    log_level: str = Field("INFO", description="Root log level of the API and worker processes.")
    access_log: bool = Field(
        True, description="One JSON line per HTTP request (request_id, tenant, route, status, latency)."
    )
    worker_metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="A worker serves its job counters and duration histograms (Prometheus) on this port of "
        "every interface of its host or container (no token: they hold kinds and outcomes, no tenant data)."
        " Unset: not served.",
    )

    # Audit anchors (issue 17): signed checkpoints of each tenant's audit chain head
    # (app/services/compliance/audit.py).
    audit_checkpoint_interval_seconds: float = Field(
        300.0, gt=0, description="How often the maintenance worker signs a checkpoint of every changed chain."
    )
    audit_anchor_key_file: Path | None = Field(
        None,
        description="Ed25519 key (PKCS#8 PEM, 0600) that signs audit checkpoints; kept out of the database. "
        "Default <home>/audit-anchor.key, created on first use. Share it between the API and the "
        "maintenance worker.",
    )
    audit_anchor_file: Path | None = Field(
        None,
        description="Append-only JSON-lines copy of every checkpoint, outside the database (0600). "
        "Default <home>/audit-anchors.jsonl. Share it between the API and the maintenance worker.",
    )

    @field_validator("artifact_backend")
    @classmethod
    def _known_artifact_backend(cls, name: str) -> str:
        # Imported on use: importing the settings module stays free of the stores and the engine's registry.
        from app.storage.backends import ARTIFACT_BACKENDS

        if name not in ARTIFACT_BACKENDS:
            available = ", ".join(ARTIFACT_BACKENDS.names())
            raise ValueError(f"unknown artifact backend {name!r}; available: {available}")
        return name

    @model_validator(mode="after")
    def _fill_profile_defaults(self) -> Self:
        if self.profile is Profile.production:
            if not self.database_url or not self.database_url.startswith("postgresql"):
                raise ValueError("profile 'production' requires LETHE_DATABASE_URL=postgresql+psycopg://...")
            if not self.broker_url or not self.broker_url.startswith(("redis://", "rediss://")):
                raise ValueError("profile 'production' requires LETHE_BROKER_URL=redis://...")
            if self.key_pepper == DEFAULT_KEY_PEPPER:
                # The default is in the source code: with it, anyone holding a copy of the api_keys table
                # can test guessed secrets offline.
                raise ValueError(
                    "profile 'production' refuses the default key_pepper: set LETHE_KEY_PEPPER to a long "
                    "random secret (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
                    "the same for every API process, and keep it for as long as the keys it hashed"
                )
        home = self.home.resolve()
        if self.database_url is None:
            self.database_url = f"sqlite:///{home / 'app.sqlite'}"
        if self.broker_url is None:
            self.broker_url = f"lethesqla+sqlite:///{home / 'broker.sqlite'}"
        if self.artifact_root is None:
            self.artifact_root = home / "artifacts"
        if self.s3_staging_dir is None:
            self.s3_staging_dir = home / "staging"
        if self.bootstrap_key_file is None:
            self.bootstrap_key_file = home / "admin.key"
        return self

    @property
    def db_url(self) -> str:
        assert self.database_url is not None
        return self.database_url

    @property
    def broker(self) -> str:
        assert self.broker_url is not None
        return self.broker_url

    @property
    def artifacts(self) -> Path:
        assert self.artifact_root is not None
        return self.artifact_root

    @property
    def staging(self) -> Path:
        assert self.s3_staging_dir is not None
        return self.s3_staging_dir

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()


def code_version() -> str:
    """The code version recorded with every job and hashed into every result cache key.

    ``LETHE_CODE_VERSION`` wins: the images stamp it at build time (the git commit, Dockerfile ``ARG``), where
    there is no .git to ask and the package version alone ("0.1.0") would let a cache serve a result of
    older code. Else the git commit of a checkout, else the package version."""
    env = os.environ.get("LETHE_CODE_VERSION")
    if env:
        return env
    from app.core.versioning import detect_code_version

    return detect_code_version()
