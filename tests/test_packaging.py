"""The built wheel installs one top-level import name, `jaxdml`: the checkout's kernels/ and experiments/
folders go in as jaxdml.kernels and jaxdml.experiments (a different PyPI distribution owns `kernels`)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# checkout folder -> where its files go in the wheel
LAYOUT = {"jaxdml": "jaxdml", "kernels": "jaxdml/kernels", "experiments": "jaxdml/experiments"}


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy of the checkout, so that the build's build/ and egg-info folders stay out of it
    src = out / "src"
    caches = shutil.ignore_patterns("*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache")

    def ignore(folder, names):
        root_only = {".git", "build", "dist", "runs", ".whl"} if Path(folder) == REPO else set()
        return set(caches(folder, names)) | (root_only & set(names))

    shutil.copytree(REPO, src, ignore=ignore)
    dist = out / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
         "--disable-pip-version-check", "-q", "-w", str(dist), str(src)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    wheels = list(dist.glob("jaxdml-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        return zf.namelist(), {n: zf.read(n).decode() for n in zf.namelist() if n.endswith("/top_level.txt")}


def test_wheel_has_only_jaxdml_at_top_level(wheel_names):
    names, _ = wheel_names
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"jaxdml"}, f"the wheel installs top-level names other than jaxdml: {sorted(top - {'jaxdml'})}"


def test_wheel_holds_kernels_and_experiments_under_jaxdml(wheel_names):
    names, _ = wheel_names
    for name in ("jaxdml/kernels/__init__.py", "jaxdml/kernels/gsp.py", "jaxdml/experiments/__init__.py",
                 "jaxdml/experiments/digit_pairs.py", "jaxdml/experiments/kd_digits_teacher.py"):
        assert name in names, f"{name} is missing from the wheel"


def test_wheel_holds_every_source_file(wheel_names):
    # setup.cfg lists the packages by hand: a new jaxdml subpackage (or a file) left out of it shows up here
    names = set(wheel_names[0])
    expected = {f"{dest}/{p.relative_to(REPO / folder).as_posix()}"
                for folder, dest in LAYOUT.items() for p in (REPO / folder).rglob("*.py")
                if "__pycache__" not in p.parts}
    assert not expected - names, f"source files missing from the wheel: {sorted(expected - names)}"


def test_top_level_txt_names_only_jaxdml(wheel_names):
    _, top_level = wheel_names
    assert len(top_level) == 1, f"expected one dist-info top_level.txt, got {sorted(top_level)}"
    (text,) = top_level.values()
    assert text.split() == ["jaxdml"], f"top_level.txt says {text.split()}"
