"""`screen` accounts for every queued scan (issue 23, item 1): a result row, else a dead letter,
else missing. The disk-full run printed "scored 12 scans ... 1 ok" and exited 0 with 11 scans
lost; the account below is what now decides the exit status (tests/integration/test_disk_full.py
runs it for real)."""

from __future__ import annotations

import json

from patchrank.pipeline.service.screening import account


def _dead(entry_id: str, scan_id: str, reason: str) -> dict:
    return {"entry_id": entry_id, "reason": reason, "msg": json.dumps({"scan_id": scan_id}), "deliveries": "3"}


QUEUED = [(f"{i:032x}", f"1-{i}", f"/a/s{i}.nii.gz") for i in range(12)]


def test_everything_has_a_row():
    rows = {sid: "ok" for sid, _, _ in QUEUED[:10]} | {sid: "failed" for sid, _, _ in QUEUED[10:]}
    acc = account(QUEUED, rows, [])
    assert acc.complete and acc.balanced and acc.counts() == {"ok": 10, "failed": 2}
    assert acc.summary() == "queued 12: result rows 12 (2 failed, 10 ok)"


def test_disk_full_one_row_eleven_dead_letters():
    rows = {QUEUED[0][0]: "ok"}
    why = "gave up after 2 deliveries: result write failed: OSError: [Errno 28] No space left on device"
    dead = [_dead(eid, sid, why) for sid, eid, _ in QUEUED[1:]]
    acc = account(QUEUED, rows, dead)
    assert not acc.complete and acc.balanced  # nothing vanished, but 11 scans have no row
    assert [u for _, u, _ in acc.dead_only] == [u for _, _, u in QUEUED[1:]]
    assert all("No space left" in r for _, _, r in acc.dead_only)
    assert "dead letters without a row 11" in acc.summary()


def test_missing_scans_are_named():
    rows = {sid: "ok" for sid, _, _ in QUEUED[:9]}
    dead = [_dead("9-9", QUEUED[9][0], "x")]  # matched by scan_id when the entry id differs
    acc = account(QUEUED, rows, dead + [_dead("0-0", "f" * 32, "another run's")])
    assert not acc.balanced and [u for _, u in acc.missing] == ["/a/s10.nii.gz", "/a/s11.nii.gz"]
    assert len(acc.dead_only) == 1 and "MISSING 2" in acc.summary()


def test_a_row_wins_over_a_dead_letter():
    """A give-up writes a failed row AND a dead letter: that scan has a row."""
    sid, eid, _ = QUEUED[0]
    acc = account(QUEUED[:1], {sid: "failed"}, [_dead(eid, sid, "gave up")])
    assert acc.complete and acc.counts() == {"failed": 1}
