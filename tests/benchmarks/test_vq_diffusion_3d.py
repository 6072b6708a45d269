"""The 3D VQ diffusion benchmark's CPU smoke mode writes its table, JSON and PNGs."""
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "vq_diffusion_3d.py"


def load():
    spec = importlib.util.spec_from_file_location("vq_diffusion_3d", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_the_table(tmp_path, capsys):
    bench = load()
    assert bench.main(["--smoke", "--methods", "base", "hamming", "--seeds", "0", "--device", "cpu",
                       "--out", str(tmp_path)]) == 0
    table = (tmp_path / "vq_diffusion_3d.md").read_text()
    for label in ("| base |", "| Hamming |", "| random (VQ-AE alone) |"):
        assert label in table
    rows = json.loads((tmp_path / "vq_diffusion_3d.json").read_text())["rows"]
    assert set(rows) == {"base", "hamming", "random"}
    assert len(rows["hamming"]["psnr"]) == 1 and rows["hamming"]["fallbacks"] == [0]  # CPU: nothing counted
    for name in ("inpaint_base_seed0.png", "inpaint_hamming_seed0.png", "inpaint_methods.png"):
        assert (tmp_path / name).is_file()
