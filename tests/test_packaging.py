"""`pip install .` ships the whole library: every package under revgn/ is one setuptools finds."""
from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_of_the_library_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = set(find_packages(str(ROOT), include=config["include"]))
    on_disk = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in (ROOT / "revgn").rglob("__init__.py")}
    assert on_disk <= shipped, f"pip install . would leave out {sorted(on_disk - shipped)}"
    assert "revgn.experiments" in shipped
