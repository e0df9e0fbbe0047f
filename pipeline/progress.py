"""Progress of long commands (`screen`, `score`, `enqueue`): a tqdm bar when stderr is a terminal;
otherwise (a log file, CI, `| tee`) one line every `every_s` seconds, e.g.
`scoring: 120/1000 scans, 3 failed, 8 skipped, 2.10 scans/s, ETA 7m00s`, and a last one at the end
if any was printed; nothing at all when quiet."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm.auto import tqdm

EVERY_S = 30.0


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "scan",
        quiet: bool = False,
        note: Callable[[], str] | None = None,
        every_s: float | None = None,
        stream=None,
    ) -> None:
        self.total, self.n, self.desc, self.unit, self.note = total, 0, desc, unit, note
        self.every_s = EVERY_S if every_s is None else every_s
        self.stream = stream or sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream) if tty and not quiet else None
        self.lines = not tty and not quiet
        self.printed = False
        self.t0 = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.set(self.n + n)

    def set(self, n: int, total: int | None = None) -> None:
        self.n, self.total = n, self.total if total is None else total
        if self.bar is not None:
            self.bar.total, self.bar.n = self.total, n
            self.bar.refresh()
        elif self.lines and time.monotonic() - self.last >= self.every_s:
            self._print()

    def line(self) -> str:
        took = time.monotonic() - self.t0
        rate = self.n / took if took > 0 else 0.0
        eta = f"ETA {_duration((self.total - self.n) / rate)}" if rate > 0 and self.n < self.total else ""
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}s", self.note() if self.note else ""]
        parts += [f"{rate:.2f} {self.unit}s/s", eta or f"{_duration(took)} elapsed"]
        return ", ".join(p for p in parts if p)

    def _print(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.printed, self.last = True, time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.printed:
            self._print()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
