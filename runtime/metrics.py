"""Metrics as JSON lines: one object per line, each with ``step`` and ``split``."""
from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsWriter:
    """Appends metric records to ``<folder>/metrics.jsonl`` (main process only; None disables).

    On resume from step ``s``, records of steps after ``s`` (written by a run that died after
    its last checkpoint) are dropped first, so the file reads as one uninterrupted run.

    Example:
        >>> writer = MetricsWriter(None)
        >>> writer.write(1, "train", loss=0.5)
    """

    def __init__(self, folder: str | Path | None, enabled: bool = True):
        self.path = Path(folder) / "metrics.jsonl" if folder is not None and enabled else None
        self.start = time.time()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Keep only records with ``step <= step``."""
        if self.path is None or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, split: str, **values) -> None:
        if self.path is None:
            return
        record = {"step": step, "split": split, "time": round(time.time() - self.start, 3)}
        record.update({k: (float(v) if hasattr(v, "__float__") else v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
