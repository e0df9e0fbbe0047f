"""Children die with the parent: a watchdog process for `patchrank screen` (and every other
user of pipeline.service.screening.services that starts Redis or Ray itself).

A normal exit, Ctrl-C or SIGTERM stops the private redis-server and the local Ray in
`finally` blocks; `kill -9` skips them. So the parent starts this watchdog in its own
session with a pipe on its stdin: while the parent lives, the watchdog notes the parent's
descendants once a second (redis-server, gcs_server, raylet, Ray workers and agents); when
the pipe reaches end-of-file without the word "done" (the parent died without cleaning up)
it terminates every noted process still running (SIGTERM, then SIGKILL after 5 s), then
exits. Processes are matched by pid and start time, so a reused pid is never signalled.

    python -m patchrank.pipeline.service.watchdog PARENT_PID
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys

DONE = b"done"


def _descendants(parent, me: int, known: dict) -> None:
    import psutil

    try:
        for c in parent.children(recursive=True):
            if c.pid != me:
                known.setdefault(c.pid, c)
    except psutil.Error:
        pass


def _terminate(procs: list) -> None:
    import psutil

    alive = []
    for p in procs:
        try:
            if p.is_running():  # also checks the start time: a reused pid is another process
                p.terminate()
                alive.append(p)
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=5)
    for p in still:
        with contextlib.suppress(psutil.Error):
            p.kill()


def main(argv: list[str]) -> int:
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which cleans up itself
    parent = psutil.Process(int(argv[1]))
    me, fd = os.getpid(), sys.stdin.fileno()
    known: dict[int, psutil.Process] = {}
    received = b""
    while True:
        _descendants(parent, me, known)
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(fd, 64)
        received += chunk
        if DONE in received:
            return 0  # the parent cleaned up
        if not chunk:  # end of file without "done": the parent died
            _terminate(list(known.values()))
            return 0


@contextlib.contextmanager
def watch_children():
    """While active, a kill -9 of this process still stops everything it started."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "patchrank.pipeline.service.watchdog", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # no terminal signals: it must outlive a parent killed by them
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.write(DONE)
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
