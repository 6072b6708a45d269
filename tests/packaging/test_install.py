"""The design-card layout installs as one ``bitlower`` package, from a wheel and editable."""
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SUBPACKAGES = ("passes", "codegen", "runtime", "models", "app")


def test_editable_install_maps_subpackages():
    code = "import bitlower, " + ", ".join(f"bitlower.{p}" for p in SUBPACKAGES) + "; " + \
        "print(*[m.__file__ for m in (" + ", ".join(f"bitlower.{p}" for p in SUBPACKAGES) + ")])"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    files = out.stdout.split()
    for sub, path in zip(SUBPACKAGES, files):
        assert pathlib.Path(path).parent.name == sub


@pytest.mark.slow
def test_wheel_contains_bitlower_subpackages_only(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("bitlower-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for sub in SUBPACKAGES:
        assert f"bitlower/{sub}/__init__.py" in names
        assert not any(n.startswith(f"{sub}/") for n in names), f"top-level {sub}/ installed"
    assert not any(n.startswith("tests/") or n.startswith("benchmarks/") for n in names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = "import bitlower.passes, bitlower.codegen, bitlower.runtime, bitlower.models, bitlower; print(bitlower.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip().startswith(str(target))


def test_readme_set_up_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^    (pip install .+)$", readme, flags=re.M)
    assert len(commands) == 2, "the README has exactly two set-up commands"
    assert any("bitlower demo" in c for c in commands) and any("pytest" in c for c in commands)
    for command in commands:
        assert command.replace("pip install", "python -m pip install -q") + "\n" in ci
