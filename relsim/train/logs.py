"""Training logs: lines on stdout, ``metrics.jsonl`` in the output directory, optionally TensorBoard and W&B.

Only the main process logs. Numbers go to ``metrics.jsonl`` (one JSON object per log event: ``step``, ``time``
and the values, e.g. ``train/loss``); rows of text (generated captions next to their references) go to
``samples.jsonl``, to TensorBoard as a Markdown table and to W&B as a table.

Example:
    >>> log = Logger(Path("run"), enabled=True)                                  # doctest: +SKIP
    >>> log.scalars(10, {"train/loss": 2.3}, line="step 10 | loss 2.3")          # doctest: +SKIP
    >>> log.rows(10, "eval/captions", [{"image": "3/0.png", "generated": "...", "reference": "..."}])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ..batching import progress_bar

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


class Logger:
    def __init__(
        self,
        out: Path,
        *,
        enabled: bool,
        tensorboard: bool = False,
        wandb_project: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.out = out
        self.file = out / METRICS_FILE if enabled else None
        self.writer = None
        self.wandb = None
        self.bar = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("tensorboard=True needs the tensorboard package (`pip install tensorboard`)") from err
            self.writer = SummaryWriter(str(out / "tensorboard"))
        if enabled and wandb_project:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("wandb=True needs the wandb package (`pip install wandb`)", name="wandb") from err
            self.wandb = wandb.init(project=wandb_project, dir=str(out), config=config or {}, resume="allow")

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[relsim.train] {message}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def scalars(self, step: int, values: dict[str, float], *, line: str) -> None:
        if not self.enabled:
            return
        self.info(line)
        with self.file.open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def rows(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        """A table of ``rows`` (dicts with the same keys): ``samples.jsonl``, TensorBoard text, a W&B table."""
        if not self.enabled or not rows:
            return
        with (self.out / SAMPLES_FILE).open("a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, "table": name, **row}, ensure_ascii=False) + "\n")
        columns = list(rows[0])
        if self.writer is not None:
            cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
            lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
            self.writer.add_text(name, "\n".join(lines), step)
            self.writer.flush()
        if self.wandb is not None:
            import wandb

            table = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
            self.wandb.log({name: table}, step=step)

    def progress(self, *, total: int, initial: int, enabled: bool | None, desc: str = "relsim train"):
        bar = progress_bar(total, enabled, desc, unit="step", initial=initial) if self.enabled else None
        if bar is None:
            return _NoBar()
        self.bar = bar
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


__all__ = [
    "METRICS_FILE",
    "SAMPLES_FILE",
    "Logger",
]
