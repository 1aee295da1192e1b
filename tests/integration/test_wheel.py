"""The built wheel works once installed: every subpackage and py.typed are
in it, and in a fresh virtualenv, from a directory outside the checkout,
the command runs the demo and every public module imports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)

IMPORT_ALL = """
import importlib, sys
import django
from django.conf import settings
settings.configure()  # the Django modules are imported as in a configured project
django.setup()
from django.core.exceptions import ImproperlyConfigured
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImproperlyConfigured as exc:
        # Django's PostGIS backend needs the GDAL/GEOS system libraries.
        if ".postgis" not in name or "GDAL" not in str(exc):
            raise
        print("skipped", name, "(no GDAL)")
print(len(sys.argv) - 1, "modules imported")
"""


def check(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (argv, result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout


def source_packages() -> set[str]:
    return {
        str(path.parent.relative_to(ROOT)).replace(os.sep, ".")
        for path in (ROOT / "pgsupervisor").rglob("*.py")
        if "__pycache__" not in path.parts
    }


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    started = time.monotonic()
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=SKIP)
    dist = tmp_path / "dist"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    check(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-w",
            str(dist),
            str(source),
        ],
        outside,
        env,
    )
    (wheel,) = dist.glob("pgsupervisor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {
        n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith(".py")
    }
    assert packaged == source_packages()
    for package in packaged:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    assert "pgsupervisor/py.typed" in names
    assert "pgsupervisor/_speedups.pyi" in names
    compiled = [n for n in names if n.startswith("pgsupervisor/_speedups.")]
    if shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0]):
        assert any(n.endswith((".so", ".pyd")) for n in compiled), compiled
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    built = time.monotonic()

    venv = tmp_path / "venv"
    check([sys.executable, "-m", "venv", str(venv)], outside, env)
    python = venv / "bin" / "python"
    check(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            f"{wheel}[flask,django,prometheus,sqlalchemy]",
            "pytest",
        ],
        outside,
        env,
    )
    installed = time.monotonic()
    venv_env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}

    script = check(["pgsupervisor", "--version"], outside, venv_env)
    module = check([str(python), "-m", "pgsupervisor", "--version"], outside, venv_env)
    assert script == module and script.startswith("pgsupervisor ")
    assert check(["pgsupervisor", "--help"], outside, venv_env) == check(
        [str(python), "-m", "pgsupervisor", "--help"], outside, venv_env
    )
    where = check(
        [str(python), "-c", "import pgsupervisor; print(pgsupervisor.__file__)"],
        outside,
        venv_env,
    )
    assert where.startswith(str(venv)), where

    modules = sorted(
        n[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        for n in names
        if n.endswith(".py")
    )
    out = check([str(python), "-c", IMPORT_ALL, *modules], outside, venv_env)
    assert f"{len(modules)} modules imported" in out
    check(
        [str(python), "-c", "from pgsupervisor.testing import Cluster; print(Cluster)"],
        outside,
        venv_env,
    )
    native = check(
        [str(python), "-c", "from pgsupervisor import native; print(native.settle)"],
        outside,
        venv_env,
    )
    assert ("built-in" in native) == any(n.endswith(".so") for n in compiled), native

    demo = check(["pgsupervisor", "demo"], outside, venv_env)
    assert " 0 lost, 0 delivered twice" in demo
    print(
        f"wheel built in {built - started:.1f} s, venv + install"
        f" {installed - built:.1f} s, total {time.monotonic() - started:.1f} s"
    )
