"""First start of the embedded profile and the CLI's admin commands."""

from __future__ import annotations

import stat

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import Settings
from app.main import create_app


def test_first_start_creates_a_local_admin_key_file(tmp_path) -> None:
    settings = Settings(home=tmp_path)
    with TestClient(create_app(settings, publisher=lambda job_id: None)) as client:
        key_file = settings.bootstrap_key_file
        assert key_file is not None and key_file.exists()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        token = key_file.read_text().strip()
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert (
            client.post(
                "/v1/keys",
                json={"name": "x", "scopes": ["read"]},
                headers={"Authorization": f"Bearer {token}"},
            ).status_code
            == 201
        )
    with TestClient(create_app(settings, publisher=lambda job_id: None)):
        assert key_file.read_text().strip() == token  # not replaced on later starts


def test_cli_migrate_and_create_key(tmp_path, monkeypatch) -> None:
    from app.core.config import reset_settings_cache

    monkeypatch.setenv("LETHE_HOME", str(tmp_path))
    reset_settings_cache()
    try:
        runner = CliRunner()
        migrated = runner.invoke(cli, ["migrate"])
        assert migrated.exit_code == 0, migrated.output
        created = runner.invoke(cli, ["create-key", "--tenant", "acme", "--scope", "submit"])
        assert created.exit_code == 0, created.output
        token = created.output.strip().splitlines()[-1]
        assert token.startswith("lk_")
        bad = runner.invoke(cli, ["create-key", "--tenant", "acme", "--scope", "root"])
        assert bad.exit_code != 0
        with TestClient(create_app(Settings(home=tmp_path), publisher=lambda job_id: None)) as client:
            headers = {"Authorization": f"Bearer {token}"}
            assert client.get("/v1/jobs", headers=headers).status_code == 200
            assert (
                client.post("/v1/keys", json={"name": "x", "scopes": ["read"]}, headers=headers).status_code
                == 403
            )
    finally:
        reset_settings_cache()
