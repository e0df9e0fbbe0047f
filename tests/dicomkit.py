"""DICOM archives for the tests: pipeline.data.dicom_export with a patient-name marker that must never reach
logs, rows or errors."""

from __future__ import annotations

from functools import partial

from patchrank.pipeline.data.dicom_export import write_series as _write_series

SECRET = "ZZSECRETPATIENT"
write_series = partial(_write_series, patient=SECRET)
