"""The dashboard's static files, without a browser: ``/`` serves the page, assets come with the right content
types and security headers, nothing is loaded from another origin, and the OpenAPI document is unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.dashboard import STATIC_DIR

# XML namespace names are identifiers, never fetched (document.createElementNS needs the SVG one).
NAMESPACES = ("http://www.w3.org/2000/svg",)
URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}""")
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def assets() -> list[Path]:
    files = sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())
    assert files, STATIC_DIR
    return files


def strip_comments(text: str, suffix: str) -> str:
    """The text without comments (HTML <!-- -->, CSS /* */, JS /* */ and // to the end of a line)."""
    if suffix == ".html":
        return re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    if suffix == ".js":
        # `//` comments only where they start a comment: at a line start or after whitespace / ; , ) { }
        text = re.sub(r"(^|[\s;,){}])//[^\n]*", r"\1", text, flags=re.M)
    return text


def test_root_serves_the_page(api: TestClient) -> None:
    response = api.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/dashboard/js/app.js">' in response.text
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert api.post("/").status_code == 405


@pytest.mark.parametrize("path", [p.relative_to(STATIC_DIR).as_posix() for p in assets()])
def test_assets_have_their_content_types(api: TestClient, path: str) -> None:
    response = api.get(f"/dashboard/{path}")
    assert response.status_code == 200, path
    expected = CONTENT_TYPES[Path(path).suffix]
    assert response.headers["content-type"].split(";")[0] == expected, path
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content == (STATIC_DIR / path).read_bytes()


def test_every_module_the_page_imports_is_served(api: TestClient) -> None:
    imports = re.compile(r"""^\s*import\s+(?:[^'"]*?\sfrom\s+)?["']([^"']+)["']""", re.M)
    for path in STATIC_DIR.rglob("*.js"):
        for target in imports.findall(path.read_text()):
            assert target.startswith("."), f"{path.name} imports {target}: only relative modules are served"
            resolved = (path.parent / target).resolve()
            assert resolved.is_file(), f"{path.name} imports a missing module {target}"
            served = api.get(f"/dashboard/{resolved.relative_to(STATIC_DIR.resolve()).as_posix()}")
            assert served.status_code == 200


def test_no_external_urls_in_assets() -> None:
    for path in assets():
        text = strip_comments(path.read_text(), path.suffix)
        for namespace in NAMESPACES:
            text = text.replace(namespace, "")
        found = URL.findall(text)
        assert not found, f"{path.relative_to(STATIC_DIR)} refers to other origins: {found}"
        assert "http://" not in text and "https://" not in text, path


def test_missing_assets_are_404_problems(api: TestClient) -> None:
    response = api.get("/dashboard/js/nope.js")
    assert response.status_code == 404
    assert api.get("/dashboard/../pyproject.toml").status_code == 404


def test_openapi_has_no_dashboard_paths(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/dashboard") for p in paths)
