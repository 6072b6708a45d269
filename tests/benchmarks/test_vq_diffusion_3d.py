"""The 3D VQ diffusion benchmark's CPU smoke mode writes its table, JSON and PNGs."""
import json


def test_smoke_run_writes_the_table(load_script, tmp_path, capsys):
    bench = load_script("vq_diffusion_3d")
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
