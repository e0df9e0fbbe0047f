"""Every Redis stream, consumer-group and key name PatchRank uses, in one place.

All names live under one namespace (default "patchrank") so several deployments, or
tests, can share one Redis server without seeing each other's entries.

  <ns>:scans               the scan stream (one entry per enqueued scan, field "msg" = JSON)
  <ns>:scorers             the consumer group that the ingest replicas read with
  <ns>:scans:dead          dead-letter stream: entries given up after max deliveries, with reason
  <ns>:errors              hash entry_id -> last infrastructure error (survives a dead consumer)
  <ns>:done:<model_ver>    set of scan_ids with a result written for that model version
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_NAMESPACE = "patchrank"
MESSAGE_FIELD = b"msg"  # the one field of a scan-stream entry: the ScanMessage JSON
_NS = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class StreamKeys:
    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        if not _NS.match(self.namespace):
            raise ValueError(f"invalid Redis namespace {self.namespace!r} (letters, digits, _ . - ; max 64)")

    @property
    def stream(self) -> str:
        return f"{self.namespace}:scans"

    @property
    def group(self) -> str:
        return f"{self.namespace}:scorers"

    @property
    def dead_letter(self) -> str:
        return f"{self.namespace}:scans:dead"

    @property
    def errors(self) -> str:
        return f"{self.namespace}:errors"

    def done(self, model_version: str) -> str:
        return f"{self.namespace}:done:{model_version}"
