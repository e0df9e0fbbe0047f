"""Progress output: a bar on a terminal, periodic one-line summaries in logs, nothing when quiet."""

from __future__ import annotations

import io
from types import SimpleNamespace

from patchrank.pipeline import progress
from patchrank.pipeline.progress import Progress
from patchrank.pipeline.service.screening import wait_drained
from patchrank.pipeline.service.streams import Backlog


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_every_period_and_a_last_one():
    out = io.StringIO()
    with Progress(10, "scoring", note=lambda: "1 failed", every_s=0, stream=out) as bar:
        bar.update(3)
        bar.update(7)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()
    assert lines[0].startswith("scoring: 3/10 scans, 1 failed, ") and "scans/s, ETA " in lines[0]
    assert lines[-1].startswith("scoring: 10/10 scans, 1 failed, ") and lines[-1].endswith("elapsed")


def test_short_runs_in_logs_and_quiet_runs_print_nothing():
    for kw in ({}, {"quiet": True, "every_s": 0}):
        out = io.StringIO()
        with Progress(5, "enqueue", stream=out, **kw) as bar:
            bar.update(5)
        assert out.getvalue() == ""
    tty = Terminal()
    with Progress(5, "enqueue", stream=tty, quiet=True) as bar:
        bar.update(5)
    assert tty.getvalue() == ""


def test_a_terminal_gets_a_bar_not_lines():
    tty = Terminal()
    with Progress(4, "scoring", stream=tty, every_s=0) as bar:
        bar.update(4)
    assert "\r" in tty.getvalue() and "4/4" in tty.getvalue() and "scans/s, ETA" not in tty.getvalue()


def test_wait_drained_logs_progress_with_dead_letters_and_skips(monkeypatch, capsys):
    left = iter([4, 2, 0])
    dead = iter([0, 1, 1, 1, 1])
    client = SimpleNamespace(
        backlog=lambda: Backlog(4, next(left), 0, 1),
        r=SimpleNamespace(xlen=lambda key: next(dead)),
        keys=SimpleNamespace(dead_letter="ns:scans:dead"),
    )
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    wait_drained(client, poll_s=0, skipped=3)
    lines = capsys.readouterr().err.splitlines()  # captured stderr is not a terminal
    assert lines[0].startswith("scoring: 2/4 scans, 1 dead-lettered, 3 skipped, ")
    assert lines[-1].startswith("scoring: 4/4 scans, 1 dead-lettered, 3 skipped, ")
