"""The repository stands alone: nothing it runs lives outside it, and the Makefile's install paths behave for a
user without root or without python3-venv."""

import os
import shutil
import subprocess

import pytest

from conftest import ROOT


# The sibling folder a developer's checkout may have and a user's clone does not (spelled in two parts so
# that this file does not match itself).
OUTSIDE = ".." + "/shared"
OUTSIDE_TOOLS = "shared" + "/tools"


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()


def test_no_tracked_file_reaches_outside_the_repository():
    offenders = []
    for name in tracked_files():
        path = ROOT / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if OUTSIDE in text or OUTSIDE_TOOLS in text:
            offenders.append(name)
    assert offenders == []


def test_the_perf_analyzer_installer_is_the_repositorys_own():
    makefile = (ROOT / "Makefile").read_text()
    assert "benches/install-perf-analyzer.sh" in makefile
    assert os.access(ROOT / "benches/install-perf-analyzer.sh", os.X_OK)


def as_nobody(*command: str, cwd) -> subprocess.CompletedProcess:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root to drop to an unprivileged user")
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def test_without_root_system_deps_prints_the_apt_get_command(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    tmp_path.chmod(0o755)
    done = as_nobody("make", "-s", "system-deps", "PYTHON=python-not-installed", cwd=tmp_path)
    assert done.returncode != 0
    assert "sudo apt-get update && sudo apt-get install -y" in done.stdout
    assert "python3-venv" in done.stdout


def test_serve_falls_back_to_tract_without_a_python_venv(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    done = subprocess.run(["make", "-s", ".venv/.ort", "PYTHON=python-not-installed"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "serving with tract only" in done.stdout
    assert not (tmp_path / ".venv").exists()
