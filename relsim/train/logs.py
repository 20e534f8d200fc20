"""Training logs: lines on stdout, ``metrics.jsonl`` in the output directory, optionally TensorBoard.

Only the main process logs. No wandb.

Example:
    >>> log = Logger(Path("run"), enabled=True)                                  # doctest: +SKIP
    >>> log.scalars(10, {"train/loss": 2.3}, line="step 10 | loss 2.3")          # doctest: +SKIP
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


class Logger:
    def __init__(self, out: Path, *, enabled: bool, tensorboard: bool = False) -> None:
        self.enabled = enabled
        self.file = out / "metrics.jsonl" if enabled else None
        self.writer = None
        self.bar = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("tensorboard=True needs the tensorboard package (`pip install tensorboard`)") from err
            self.writer = SummaryWriter(str(out / "tensorboard"))

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

    def progress(self, *, total: int, initial: int, enabled: bool | None):
        show = self.enabled and (sys.stderr.isatty() if enabled is None else enabled)
        if not show:
            return _NoBar()
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", desc="relsim train", dynamic_ncols=True)
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
