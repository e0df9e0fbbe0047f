"""One clean line per failure: what result rows, dead letters and the CLI print.

A failure reason is `ExceptionClass: message` on one line, without ANSI colour codes and
without the remote traceback Ray wraps around an exception raised in another process
(RayTaskError carries the original exception as `.cause`; its text starts with the
task's name and a traceback, and the cause's own line comes last).
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CLASS_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Fault))(?:\(.*?\))?: ?(.*)$")
MAX_REASON = 300


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def root_cause(exc: BaseException) -> BaseException:
    """The exception a Ray wrapper (RayTaskError, ...) or an explicit `raise ... from` carries."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError
        if isinstance(cause, BaseException) and type(exc).__name__.startswith("RayTaskError"):
            exc = cause
            continue
        break
    return exc


def _message(exc: BaseException) -> tuple[str, str]:
    name = exc.__class__.__name__
    if name.startswith("RayTaskError(") and name.endswith(")"):
        name = name[len("RayTaskError(") : -1]
    text = strip_ansi(str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return name, ""
    if "Traceback (most recent call last)" in text or lines[0].startswith("ray::"):
        for ln in reversed(lines):  # a remote traceback: its last "SomeError: message" line is the cause
            m = _CLASS_LINE.match(ln)
            if m:
                return m.group(1).rsplit(".", 1)[-1], m.group(2)
        return name, lines[-1]
    return name, " ".join(lines)


def one_line(exc: BaseException, limit: int = MAX_REASON) -> str:
    """`Class: message` of the exception's root cause, on one line, at most `limit` chars."""
    name, msg = _message(root_cause(exc))
    line = f"{name}: {msg}" if msg else name
    line = re.sub(r"\s+", " ", line).strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."
