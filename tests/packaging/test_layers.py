"""Layers: the application (bitlower.app) imports the library; nothing in the library imports the app."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ["bitlower", "passes", "codegen", "runtime", "models"]  # source folders of the installed library


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_never_imports_the_app():
    offenders = []
    for folder in LIBRARY:
        for path in (ROOT / folder).rglob("*.py"):
            if "app" in path.relative_to(ROOT).parts:
                continue
            bad = [n for n in _imports(path) if n == "bitlower.app" or n.startswith("bitlower.app.")]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in bad]
    assert not offenders, offenders


def test_app_holds_the_command_line_and_demo():
    app = {p.name for p in (ROOT / "bitlower" / "app").glob("*.py")}
    assert {"cli.py", "cli_train.py", "demo.py", "demo_report.py", "demo_timing.py", "train_tasks.py"} <= app
    assert not any((ROOT / "bitlower" / name).exists() for name in ("cli.py", "cli_train.py", "demo.py"))


def test_bench_runs_nothing_by_file_path():
    source = (ROOT / "bitlower" / "app" / "cli.py").read_text()
    assert "subprocess" not in source and "__file__" not in source
