"""Every code block of README.md and of the bitlower.testing docstring runs (CPU, tiny sizes).

Mechanism: a line ``<!-- readme-test {JSON} -->`` right before a fenced block may say
- ``"replace": [[old, new], ...]``: literal substitutions made before running (fewer steps, a
  smaller model); the rest of the block runs as written;
- ``"append": {"train": "...", ...}``: arguments appended to each ``bitlower <command>`` line;
- ``"requires": "timm"``: skip only when that package is not installed;
- ``"expect": "text"``: the block's printed output must contain it.
``python`` blocks run in order, each in a fresh namespace, in one temporary working folder (so a
later block reads the files of an earlier one); ``bash`` blocks run each ``bitlower`` line through
``bitlower.app.cli.main``. ``text`` blocks (printed results) are not code.
"""
import contextlib
import importlib.util
import io
import json
import re
import shlex
from pathlib import Path

import pytest
import torch.nn.functional as F

from bitlower.app.cli import main
from bitlower.app.demo import cpu_threads

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?:^<!-- readme-test (?P<meta>\{[^\n]*\}) -->\n)?^```(?P<lang>\w*)\n(?P<code>.*?)^```",
                   re.S | re.M)


def readme_blocks():
    text = (ROOT / "README.md").read_text()
    return [(m.group("lang"), json.loads(m.group("meta") or "{}"), m.group("code")) for m in BLOCK.finditer(text)]


def test_every_block_has_a_known_language():
    langs = [lang for lang, _, _ in readme_blocks()]
    assert langs and set(langs) <= {"python", "bash", "text"}, langs
    assert langs.count("python") >= 6 and "bash" in langs


def _run_python(code: str, meta: dict) -> str:
    for old, new in meta.get("replace", []):
        assert old in code, f"substitution {old!r} not found: the README changed"
        code = code.replace(old, new)
    out = io.StringIO()
    sdpa = F.scaled_dot_product_attention  # a block may swap it in; later tests need the original
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    finally:
        F.scaled_dot_product_attention = sdpa
    return out.getvalue()


def _run_bash(code: str, meta: dict) -> None:
    for line in code.splitlines():
        words = shlex.split(line.split("#")[0])
        if not words:
            continue
        assert words[0] == "bitlower", f"README bash line that is not a bitlower command: {line!r}"
        extra = shlex.split(meta.get("append", {}).get(words[1], ""))
        assert main(words[1:] + extra) == 0, line


def test_readme_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran = 0
    with cpu_threads(1):
        for lang, meta, code in readme_blocks():
            required = meta.get("requires")
            if required and importlib.util.find_spec(required) is None:
                continue  # stated in the README: the timm block runs only where timm is installed
            if lang == "python":
                printed = _run_python(code, meta)
                assert meta.get("expect", "") in printed, printed
                ran += 1
            elif lang == "bash":
                _run_bash(code, meta)
                ran += 1
    assert ran >= 6


def _testing_docstring_example() -> str:
    import bitlower.testing

    doc = bitlower.testing.__doc__
    body = doc.split("::\n", 1)[1]
    lines = []
    for line in body.splitlines():
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


class _MyAttention:
    """The user's module the docstring names (``MyAttention(dim, heads)``, ``project``, ``attend``, ``scale``)."""

    def __init__(self, dim, heads):
        import torch

        self.heads, self.head_dim, self.scale = heads, dim // heads, (dim // heads) ** -0.5
        self.qkv = torch.nn.Linear(dim, 3 * dim)

    def eval(self):
        return self

    def project(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).detach().view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
        return qkv[0], qkv[1], qkv[2]

    def attend(self, q, k, v):
        return (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1) @ v


def test_testing_docstring_example_runs():
    """Runs the docstring's code as written; only its placeholder class ``MyAttention`` is supplied."""
    code = _testing_docstring_example() + "\n\ntest_my_attention()\n"
    assert "def test_my_attention" in code
    with cpu_threads(1):
        exec(compile(code, "bitlower/testing.py", "exec"), {"__name__": "__doc_example__", "MyAttention": _MyAttention})
