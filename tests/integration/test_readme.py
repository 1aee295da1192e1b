"""README.rst's code cannot rot: every Python block compiles, and the ones a
reader would paste run against a real server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from .helpers import eventually

README = Path(__file__).resolve().parents[2] / "README.rst"
PLACEHOLDER = "postgresql://app:secret@db:5432/app"


def blocks() -> dict[str, str]:
    """Python code blocks by the title of the section they stand in."""
    text = README.read_text()
    found: dict[str, str] = {}
    section = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1]) and lines[i]:
            section = lines[i].strip()
        if lines[i].strip() == ".. code-block:: python":
            body: list[str] = []
            i += 2
            while i < len(lines) and (not lines[i] or lines[i].startswith("    ")):
                body.append(lines[i][4:])
                i += 1
            key = section if section not in found else f"{section} ({len(found)})"
            found[key] = "\n".join(body).strip() + "\n"
            continue
        i += 1
    return found


def test_every_python_block_compiles() -> None:
    found = blocks()
    assert {"Using it", "Streaming changes", "Flask", "Django", "Prometheus"} <= set(
        found
    )
    for title, code in found.items():
        compile(code, f"README.rst [{title}]", "exec")


def run_block(title: str, real_dsn: str, **namespace: Any) -> dict[str, Any]:
    code = blocks()[title].replace(PLACEHOLDER, real_dsn)
    namespace["__name__"] = "readme"
    exec(compile(code, f"README.rst [{title}]", "exec"), namespace)
    return namespace


def test_using_it_block_runs(app_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    run_block("Using it", app_dsn)
    assert "database stopped -> starting" in capsys.readouterr().out


def test_streaming_block_runs(repl_db: tuple[str, str]) -> None:
    dsn, _ = repl_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table orders (id int primary key)")
    ns = run_block("Streaming changes", dsn)
    manager = ns["manager"]
    try:
        manager.wait_active(timeout=15)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("insert into orders values (1)")
    finally:
        manager.drop_replication_slot_on_stop()
        manager.stop()


def test_flask_block_runs(app_dsn: str) -> None:
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        conn.execute("create table orders (id int primary key)")
    ns = run_block("Flask", app_dsn)
    client = ns["app"].test_client()
    try:
        assert client.get("/orders/count").get_json() == {"count": 0}
        assert eventually(lambda: client.get("/healthz/ready").status_code == 200)
        assert client.get("/healthz/live").status_code == 200
    finally:
        ns["pgs"].manager.stop()


def test_every_dotted_name_in_the_readme_resolves() -> None:
    """``pgsupervisor.testing.Cluster`` and friends: what the README names,
    a user can import (as a module, or an attribute of one)."""
    import importlib

    names = set(
        re.findall(
            r"[`\"'](pgsupervisor(?:\.[A-Za-z_][A-Za-z0-9_]*)+)[`\"']",
            README.read_text(),
        )
    )
    assert "pgsupervisor.testing.Cluster" in names
    for name in sorted(names):
        module, _, attr = name.rpartition(".")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), attr), name
