"""Writing a volume + RAS affine as a single-frame DICOM MR series with pydicom, as a PACS export would (used by
the tests and `patchrank bench dicom` to build archives from NIfTI volumes).

Voxel (i, j, k) of the volume becomes column i, row j of slice k; the geometry tags are derived from the
affine (RAS -> LPS), so a reader that gets DICOM geometry right recovers the NIfTI of the same volume.
Pixels are stored as int16 with RescaleSlope/Intercept, file names are random and InstanceNumber unrelated
to position, so a reader must order slices by ImagePositionPatient.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SLOPE, INTERCEPT = 0.5, 10.0  # stored = (value - INTERCEPT) / SLOPE, exact for integer volumes


def write_series(
    vol: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    *,
    description: str = "AX FLAIR",
    study_uid: str | None = None,
    names: list[str] | None = None,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M"),
    transfer_syntax: str | None = None,
    seed: int = 0,
    patient: str = "ANONYMOUS",
) -> tuple[str, list[Path]]:
    """Write one single-frame file per slice k into folder (names default: shuffled random hex). -> (uid, files)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    uid, study = generate_uid(), study_uid or generate_uid()
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    col_vec, row_vec = lps[:3, 0], lps[:3, 1]  # i runs along a row (columns), j down a column (rows)
    col_sp, row_sp = np.linalg.norm(col_vec), np.linalg.norm(row_vec)
    nz = vol.shape[2]
    names = names or [f"{rng.integers(1 << 40):010x}" for _ in range(nz)]
    instance = rng.permutation(nz) + 1  # InstanceNumber deliberately unrelated to position
    files = []
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
        ds.PatientName, ds.PatientID = f"{patient}^JANE", f"{patient}ID"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, uid
        ds.Modality, ds.SeriesDescription, ds.ProtocolName = "MR", description, description
        ds.ImageType = list(image_type)
        ds.InstanceNumber = int(instance[k])
        ds.ImageOrientationPatient = [float(v) for v in (*(col_vec / col_sp), *(row_vec / row_sp))]
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.PixelSpacing = [float(row_sp), float(col_sp)]
        ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = SLOPE, INTERCEPT
        stored = np.rint((vol[:, :, k].T - INTERCEPT) / SLOPE).astype("<i2")
        if transfer_syntax is None:
            ds.PixelData = stored.tobytes()
        else:  # a compressed syntax: encapsulated bytes no installed decoder can read
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + stored.tobytes()[:64]])
            ds["PixelData"].VR = "OB"
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return uid, files
