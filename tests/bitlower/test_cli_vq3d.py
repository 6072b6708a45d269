"""``bitlower train --task vqae3d/absorbing`` and ``bitlower sample3d`` end to end on tiny settings."""
import json

import pytest

from bitlower.app.cli import main

VQ_BASE = ["--volume-shape", "16,16,16", "--patch-size", "8",
      "--model-arg", "base_channels=4", "--model-arg", "max_channels=8", "--model-arg", "embed_dim=8",
      "--model-arg", "codebook_heads=2", "--model-arg", "codebook_size=4", "--batch-size", "4", "--lr", "3e-4",
      "--no-progress", "--device", "cpu", "--preset", "none"]
VQ = [*VQ_BASE, "--train-volumes", "2", "--test-volumes", "1"]
TF = ["--model-arg", "width=16", "--model-arg", "depth=1", "--model-arg", "num_heads=2", "--batch-size", "2",
      "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def vqae(tmp_path_factory):
    out = tmp_path_factory.mktemp("vqae")
    assert main(["train", "--task", "vqae3d", *VQ, "--steps", "2", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def test_train_absorbing_resume_and_sample(vqae, tmp_path, capsys):
    out, samples = tmp_path / "tf", tmp_path / "samples"
    common = ["train", "--task", "absorbing", "--vqae", str(vqae), *TF, "--preset", "hamming", "--steps", "4", "--log-every", "1",
              "--out", str(out)]
    assert main([*common, "--stop-after", "2"]) == 0
    assert main([*common, "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == [1, 2, 3, 4]
    assert "absorbing (hamming) on 64 tokens" in capsys.readouterr().out
    assert main(["sample3d", "--checkpoint", str(out / "checkpoint.pt"), "--count", "1", "--steps", "3",
                 "--device", "cpu", "--out", str(samples)]) == 0
    report = json.loads((samples / "inpaint.json").read_text())
    assert set(report) >= {"transformer", "random"} and report["preset"] == "hamming"
    assert (samples / "inpaint_0.png").is_file()
    try:
        import nibabel  # noqa: F401
        assert (samples / "inpaint_0_inpainted.nii.gz").is_file()
    except ImportError:
        assert "nibabel is not installed" in capsys.readouterr().out
    assert main(["sample3d", "--checkpoint", str(out / "checkpoint.pt"), "--mode", "synthesize", "--count", "2",
                 "--steps", "3", "--device", "cpu", "--out", str(samples)]) == 0
    assert (samples / "sample_1.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["train", "--task", "absorbing", "--out", "{tmp}/a"], "needs --vqae"),
    (["train", "--task", "absorbing", "--vqae", "{tmp}/missing.pt", "--out", "{tmp}/a"], "not found"),
    (["train", "--task", "vqae3d", "--volume-shape", "16,16", "--out", "{tmp}/a"], "D,H,W"),
    (["train", "--task", "vqae3d", "--preset", "hamming", "--out", "{tmp}/a"], "no attention"),
    (["train", "--task", "vqae3d", "--volumes", "nifti", "--out", "{tmp}/a"], "'phantom' or 'nifti:<folder>'"),
    (["train", "--task", "vqae3d", "--volume-shape", "12,16,16", "--patch-size", "8", "--out", "{tmp}/a"],
     "must divide"),
    (["sample3d", "--checkpoint", "{tmp}/none.pt"], "not found"),
])
def test_bad_arguments_are_one_line_errors(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_absorbing_refuses_a_checkpoint_of_another_task(vqae, tmp_path, capsys):
    other = tmp_path / "tf"
    assert main(["train", "--task", "absorbing", "--vqae", str(vqae), *TF, "--preset", "none", "--steps", "1",
                 "--out", str(other)]) == 0
    assert main(["train", "--task", "absorbing", "--vqae", str(other / "checkpoint.pt"), "--out",
                 str(tmp_path / "b")]) == 2
    assert "not a checkpoint of this task" in capsys.readouterr().err


def test_vqae_trains_on_a_folder_of_nifti_files(tmp_path, capsys):
    nibabel = pytest.importorskip("nibabel", reason="nibabel (the optional NIfTI extra) is not installed")
    import numpy as np

    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(3):
        data = np.random.default_rng(i).random((12, 20, 16)).astype(np.float32)
        nibabel.save(nibabel.Nifti1Image(data, np.diag([1.5, 1.0, 1.2, 1.0])), str(folder / f"s{i}.nii.gz"))
    argv = VQ_BASE
    assert main(["train", "--task", "vqae3d", *argv, "--volumes", f"nifti:{folder}", "--steps", "1",
                 "--out", str(tmp_path / "run")]) == 0
    assert "vqae3d on nifti:" in capsys.readouterr().out
    (folder / "s1.nii.gz").write_bytes(b"broken")
    assert main(["train", "--task", "vqae3d", *argv, "--volumes", f"nifti:{folder}", "--steps", "1",
                 "--out", str(tmp_path / "run2")]) == 2
    assert "s1.nii.gz: cannot be read as NIfTI" in capsys.readouterr().err
