"""The `lethe` command: run the service, migrate, create keys, follow jobs, run the demo."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from app.core.config import Profile, Settings, get_settings

cli = typer.Typer(help="Lethe: machine-unlearning evaluation service.", no_args_is_help=True)
console = Console()


def _prepare(settings: Settings) -> Path | None:
    from app.core import migrate
    from app.core.db import make_engine, make_session_factory

    migrate.upgrade(settings)
    if settings.profile is not Profile.embedded:
        return None
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            return migrate.bootstrap_admin_key(session, settings)
    finally:
        engine.dispose()


@cli.command()
def migrate() -> None:
    """Upgrade the database schema to the latest revision."""
    settings = get_settings()
    from app.core import migrate as migration

    migration.upgrade(settings)
    console.print(f"schema upgraded on {settings.db_url.split('@')[-1]}")


@cli.command()
def up(
    host: Annotated[str, typer.Option(help="API bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
) -> None:
    """Start the whole service: migrate, a GPU worker, a maintenance worker with the reaper, the API."""
    from app.services.processes import ServiceGroup

    settings = get_settings()
    created = _prepare(settings)
    if created:
        console.print(f"[bold]Created the local admin API key[/bold]; it is stored in {created}")
    elif settings.profile is Profile.embedded:
        console.print(f"admin API key file: {settings.bootstrap_key_file}")
    group = ServiceGroup(settings, host=host, port=port, log_dir=settings.home.resolve() / "logs")
    group.start()
    group.wait_ready()
    console.print(
        f"Lethe is up at {group.base_url} (OpenAPI: {group.base_url}/docs); logs in {group.log_dir}."
        " Ctrl-C stops it."
    )
    raise typer.Exit(group.wait())


@cli.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues: gpu, default.")] = "gpu",
    beat: Annotated[bool, typer.Option(help="Also run the periodic reaper (one per deployment).")] = False,
    name: Annotated[str, typer.Option(help="Worker name.")] = "worker",
) -> None:
    """Run one Celery worker (prefork, one job at a time, a fresh process per job)."""
    from app.services.processes import worker_command

    cmd = worker_command(get_settings(), queues, name, beat=beat)
    os.execv(cmd[0], cmd)


@cli.command("create-key")
def create_key_cmd(
    tenant: Annotated[str, typer.Option(help="Tenant name (created if missing).")],
    name: Annotated[str, typer.Option(help="Key label.")] = "cli",
    scopes: Annotated[
        list[str] | None, typer.Option("--scope", help="read | submit | admin (repeatable).")
    ] = None,
) -> None:
    """Create an API key and print it (shown once)."""
    from app.core.db import make_engine, make_session_factory
    from app.core.security import Scope
    from app.services.keys import create_key, get_or_create_tenant

    settings = get_settings()
    try:
        parsed = [Scope(s) for s in (scopes or [Scope.read.value])]
    except ValueError as exc:
        raise typer.BadParameter(f"scopes are read, submit, admin: {exc}") from exc
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            row = get_or_create_tenant(session, tenant)
            _, new = create_key(
                session, tenant=row, name=name, scopes=parsed, pepper=settings.key_pepper, actor="cli"
            )
            session.commit()
    finally:
        engine.dispose()
    typer.echo(new.token)


def follow_job(client: Any, job_id: str, label: str) -> dict[str, Any]:
    """Follow a job with a progress bar until it ends."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[phase]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(label, total=1.0, phase="queued")

        def update(job: dict[str, Any]) -> None:
            info = job.get("progress") or {}
            fraction = 1.0 if job["status"] == "succeeded" else float(info.get("fraction") or 0.0)
            progress.update(task, completed=fraction, phase=f"{job['status']} {info.get('phase', '')}")

        return client.follow(job_id, on_update=update)


@cli.command()
def follow(
    job_id: str,
    url: Annotated[str, typer.Option(envvar="LETHE_URL")] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option(envvar="LETHE_API_KEY")] = None,
) -> None:
    """Follow a job's progress until it ends."""
    from app.client import LetheClient

    settings = get_settings()
    key = api_key or (
        settings.bootstrap_key_file.read_text().strip()
        if settings.bootstrap_key_file and settings.bootstrap_key_file.exists()
        else None
    )
    if not key:
        raise typer.BadParameter("pass --api-key or set LETHE_API_KEY")
    client = LetheClient(url, key)
    job = follow_job(client, job_id, job_id[:8])
    console.print_json(
        data={"status": job["status"], "metrics": job.get("metrics"), "error": job.get("error")}
    )
    raise typer.Exit(0 if job["status"] == "succeeded" else 1)


@cli.command()
def demo(
    port: Annotated[int, typer.Option(help="API port for the demo service.")] = 8765,
    home: Annotated[Path, typer.Option(help="Where the demo service keeps its files.")] = Path("var/demo"),
) -> None:
    """Start the embedded service, train, forget (random 10 % and one class) with retrain and ft, compare."""
    from app.demo import run_demo

    raise typer.Exit(run_demo(port=port, home=home, console=console))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
