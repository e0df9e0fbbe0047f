"""The ingest replica lowers its own CPU priority so the scorers on its node come first (actors/ingest.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = r"""
import os, sys, threading
from patchrank.actors.ingest import INGEST_NICE, yield_cpu_to_scorers

def nice(tid=0):
    return os.getpriority(os.PRIO_PROCESS, tid)

started = threading.Event(); done = threading.Event(); seen = {}
def early():  # a thread that exists before the call
    started.set(); done.wait(); seen["early"] = nice(threading.get_native_id())
t = threading.Thread(target=early); t.start(); started.wait()
before = nice()
yield_cpu_to_scorers()
late = threading.Thread(target=lambda: seen.__setitem__("late", nice(threading.get_native_id())))  # started after
late.start(); late.join(); done.set(); t.join()
want = min(19, before + INGEST_NICE)
assert (nice(), seen["early"], seen["late"]) == (want, want, want), (before, nice(), seen)
yield_cpu_to_scorers()
assert nice() == min(19, want + INGEST_NICE)  # capped at 19
print("ok", before, want)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_every_thread_of_the_ingest_process_is_lowered_and_new_ones_inherit_it():
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("ok ")
