"""`lethe demo` end to end, as `make demo` runs it: the real command in a subprocess on a fresh LETHE_HOME.

Run twice in the same home, as `make demo` twice would (the second run's deletion request reuses its cached
retrain and evaluation, its audits the stored shadows; the rest runs again): both exit 0 and print every
section; the printed tables
are the rows of the API results the run saved with ``--json`` (recomputed here, independently of the demo's
rendering); the two runs' tables are identical; the signed report verifies with `lethe verify-report` (and
fails once one byte changes); nothing of the service is left running.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app import demo
from tests.conftest import TEST_DATABASE_URL
from tests.workers.servers import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.broker,
    # The demo always runs the embedded profile: the Postgres + Redis pass would only repeat it.
    pytest.mark.skipif(TEST_DATABASE_URL is not None, reason="the demo runs the embedded profile only"),
]

REPO = Path(__file__).resolve().parents[2]
# Generous: the 60 s target is for an idle 2-core box; CI shares its cores.
RUN_TIMEOUT_S = 900.0


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update({"LETHE_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"})
    return env


def _lethe(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=_env(home),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def _run_demo(home: Path, json_path: Path) -> tuple[str, dict[str, Any], int]:
    port = free_port()
    done = _lethe(home, "demo", "--home", str(home), "--port", str(port), "--json", str(json_path))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return done.stdout, json.loads(json_path.read_text()), port


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("│").split("│")]


def _table_rows(output: str) -> list[list[str]]:
    return [_cells(line) for line in output.splitlines() if line.lstrip().startswith("│")]


def _two(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _expected_comparison_rows(comparison: dict[str, Any]) -> list[list[str]]:
    rows = []
    for row in comparison["rows"]:
        label = {"evaluate": "original", "retrain": "retrain"}.get(row["kind"], row["method"])
        metrics = row["metrics"]
        rows.append(
            [
                label,
                *[_two(metrics.get(name)) for name in ("UA", "RA", "TA", "MIA-Efficacy")],
                _two(row["avg_gap"]),
                ", ".join(row["flags"]) or "—",
            ]
        )
    return rows


def _service_processes(home: Path) -> list[int]:
    """This user's processes started for ``home`` (the service's children carry LETHE_HOME=home)."""
    marker = f"LETHE_HOME={home.resolve()}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue  # another user's process, or one that just exited
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _check_run(output: str, summary: dict[str, Any], home: Path, port: int) -> None:
    for title in demo.SECTION_TITLES.values():
        assert title in output, title
    assert f"Dashboard: http://127.0.0.1:{port}/" in output
    printed = _table_rows(output)

    # Section 1: every method, the original and the retrain oracle on the random set, as the API gave them.
    random_rows = _expected_comparison_rows(summary["comparisons"]["random"])
    assert sorted(r[0] for r in random_rows) == sorted(["retrain", "original", *demo.METHODS])
    assert random_rows[0][0] == "retrain" and random_rows[0][5] == "0.00"
    for row in random_rows + _expected_comparison_rows(summary["comparisons"]["searched"]):
        assert row in printed, (row, output)

    # Section 2: the searched set is the search's output, of the random set's size, with its figures printed.
    search = summary["search"]
    assert summary["forget_sets"]["searched"]["size"] == summary["forget_sets"]["random"]["size"]
    assert 0.0 <= search["overlap_with_initial"] <= 1.0
    assert f"{100 * search['overlap_with_initial']:.1f} %" in output
    assert f"{search['objective_initial_set']:.2f} → {search['objective_final_set']:.2f}" in output

    # Section 3: U-LiRA of the no-op and of the retrain control, each with its interval.
    assert set(summary["audits"]) == {"identity", "retrain"}
    for method, metrics in summary["audits"].items():
        low, auc, high = metrics["ulira_auc_ci_low"], metrics["ulira_auc"], metrics["ulira_auc_ci_high"]
        assert 0.0 <= low <= auc <= high <= 1.0
        line = next(r for r in printed if r[0].startswith(f"{method} ("))
        assert line[1:3] == [f"{auc:.3f}", f"[{low:.3f}, {high:.3f}]"], line

    # Section 4: the verdict beside both controls, and a report file that verifies offline.
    report = summary["report"]
    assert report["verdict"] in ("pass", "fail", "inconclusive")
    assert f"verdict {report['verdict'].upper()}" in output
    assert set(report["controls"]) == {"original", "identity"}
    outcome = next(r for r in printed if r[0] == "outcome")
    assert outcome[1] == report["verdict"]
    assert outcome[2:] == [control["outcome"] for control in report["controls"].values()]
    report_path = Path(summary["report_path"])
    assert report_path.is_relative_to(home.resolve()) and str(report_path) in output
    assert json.loads(report_path.read_bytes()) == report
    public_key = summary["verification"]["public_key_path"]
    assert _lethe(home, "verify-report", str(report_path), "--public-key", public_key).returncode == 0
    tampered = home / "tampered.json"
    data = bytearray(report_path.read_bytes())
    data[data.index(b'"verdict"') + 1] ^= 0x01
    tampered.write_bytes(bytes(data))
    assert _lethe(home, "verify-report", str(tampered), "--public-key", public_key).returncode == 1

    # The tables hold no timings; the footer does.
    assert "RTE" not in "".join(summary["tables"]) and "timings:" in output
    # Everything was shut down.
    assert _port_free(port)
    assert _service_processes(home) == []


def test_demo_tells_the_whole_story_and_repeats_it_identically(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first_output, first, first_port = _run_demo(home, tmp_path / "first.json")
    _check_run(first_output, first, home, first_port)

    second_output, second, second_port = _run_demo(home, tmp_path / "second.json")
    _check_run(second_output, second, home, second_port)
    # Trained, retrained, unlearned and searched again: the same tables.
    assert len(first["tables"]) == len(demo.render_tables(demo.DemoResult(**first))) == 5
    assert second["tables"] == first["tables"]
