"""The OpenAPI document and the documentation pages, from the real API (uvicorn, real Redis):
every /v1 operation documents its problem+json errors with the Problem schema and the bearer
key; /docs and /redoc load only assets the service itself serves."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.errors import BY_SLUG, PROBLEM_BASE
from tests.conftest import REPO

PROBLEM = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture
def doc(client: httpx.Client) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200, r.text
    return dict(r.json())


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items() if m in METHODS]


def test_every_v1_operation_documents_its_problems_and_the_bearer_key(doc: dict[str, Any]) -> None:
    v1 = [(m, p, op) for m, p, op in operations(doc) if p.startswith("/v1/")]
    assert len(v1) >= 15 and ("get", "/v1/sessions") in {(m, p) for m, p, _ in v1}
    for method, path, op in v1:
        where = f"{method.upper()} {path}"
        errors = {int(s): r for s, r in op["responses"].items() if int(s) >= 400}
        assert {401, 429, 503} <= set(errors), where
        if op.get("requestBody") or any(p["in"] == "query" for p in op.get("parameters", [])):
            assert 422 in errors, where
        if "{sid}" in path:
            assert 404 in errors, where
        for status, response in errors.items():
            assert set(response["content"]) == {PROBLEM}, (where, status)  # no application/json errors
            media = response["content"][PROBLEM]
            assert media["schema"] == {"$ref": PROBLEM_REF}, (where, status)
            for slug, example in media["examples"].items():
                assert slug in BY_SLUG and BY_SLUG[slug].status == status, (where, slug)
                assert example["value"]["type"] == PROBLEM_BASE + slug
            assert response["description"], (where, status)
        assert op["security"] == [{"bearerAuth": []}], where
    for method, path, op in operations(doc):
        if not path.startswith("/v1/"):
            assert "security" not in op, f"{method} {path} needs no key"
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer",
    }  # fmt: skip


def test_the_routes_document_the_errors_they_answer_with(doc: dict[str, Any]) -> None:
    def statuses(method: str, path: str) -> set[int]:
        return {int(s) for s in doc["paths"][path][method]["responses"] if int(s) >= 400}

    job = {404, 409, 413, 415, 422, 429, 503, 504}
    assert statuses("post", "/v1/sessions/{sid}/points") >= job
    assert statuses("post", "/v1/sessions/{sid}/exemplars") >= job
    assert statuses("post", "/v1/sessions/{sid}/classify") >= job
    assert statuses("post", "/v1/sessions/{sid}/samples") >= job
    assert statuses("post", "/v1/sessions") >= {404, 413, 415, 422, 429}
    assert statuses("post", "/v1/sessions/import") >= {404, 409, 413, 422, 429}
    assert 415 not in statuses("post", "/v1/sessions/import")  # any content type
    assert 504 not in statuses("get", "/v1/sessions/{sid}")
    points = doc["paths"]["/v1/sessions/{sid}/points"]["post"]["responses"]
    assert set(points["409"]["content"][PROBLEM]["examples"]) == {"seq-conflict", "wrong-session-kind"}


def test_the_422_is_the_problem_schema_not_fastapis(doc: dict[str, Any]) -> None:
    text = json.dumps(doc)
    assert "HTTPValidationError" not in text and '"ValidationError"' not in text
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["properties"]) == {"type", "title", "status", "detail", "instance", "request_id"}
    assert set(problem["required"]) == {"type", "title", "status"}
    assert problem["additionalProperties"] is True
    create = doc["paths"]["/v1/sessions"]["post"]["responses"]["422"]
    assert create["content"][PROBLEM]["schema"] == {"$ref": PROBLEM_REF}


def test_a_real_problem_fits_the_documented_schema(client: httpx.Client, doc: dict[str, Any]) -> None:
    problem = doc["components"]["schemas"]["Problem"]
    for r in (
        client.get("/v1/sessions/" + "0" * 32),
        client.post("/v1/sessions", json={"kind": "lstm"}),
        client.get("/v1/sessions", params={"limit": 0}),
    ):
        body = r.json()
        assert r.headers["content-type"] == PROBLEM and set(problem["required"]) <= set(body)
        for name, spec in problem["properties"].items():
            if name in body:
                types = {t["type"] for t in spec.get("anyOf", [spec])}
                assert {"string": str, "integer": int}[next(iter(types - {"null"}))] is type(body[name])


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href", "spec-url") and v]


def page_urls(html: str) -> list[str]:
    links = _Links()
    links.feed(html)
    # URLs given to the page's scripts: Swagger UI's `url: '/openapi.json'`.
    return links.urls + re.findall(r"""\burl:\s*['"]([^'"]+)['"]""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_local_assets(client: httpx.Client, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    urls = page_urls(html)
    assert "/openapi.json" in urls and len(urls) >= 3, urls
    assert not re.search(r"https?://|//cdn|googleapis|jsdelivr|unpkg", html, re.I), html
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        got = client.get(url)
        assert got.status_code == 200, url
        assert len(got.content) > 100, url
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts and all(
        client.get(u).headers["content-type"].startswith("text/javascript") for u in scripts
    )


def test_only_the_vendored_assets_are_served(client: httpx.Client) -> None:
    for name in ("LICENSE-redoc", "README.md", "..%2Fapi%2Fapp.py", "nothing.js"):
        r = client.get(f"/docs-assets/{name}")
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, name
    assert client.get("/docs-assets/swagger-ui.css").headers["content-type"].startswith("text/css")


def test_the_vendored_assets_ship_with_their_licenses() -> None:
    assets = REPO / "app" / "docs_assets"
    for name in ("LICENSE-swagger-ui-dist", "NOTICE-swagger-ui-dist", "swagger-ui-bundle.js.LICENSE.txt",
                 "LICENSE-redoc", "redoc.standalone.js.LICENSE.txt"):  # fmt: skip
        assert (assets / name).stat().st_size > 0, name
    assert "Apache License" in (assets / "LICENSE-swagger-ui-dist").read_text()
    assert "MIT License" in (assets / "LICENSE-redoc").read_text()
    assert Path(assets / "README.md").read_text().count("sha256") >= 2
