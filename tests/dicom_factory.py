"""Tiny, valid CT DICOM files for tests (pydicom only, no downloads).

``write_ct_slice`` writes one slice; ``write_series`` writes a volume as ``0.dcm … N-1.dcm``.
Positions are given as ``z``, the distance along the slice normal, so the same ``z`` values
give the same order for any ImageOrientationPatient.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

ORIGIN = (-100.0, -120.0, 0.0)
STUDY_UID = generate_uid()


def write_ct_slice(
    path: str | Path,
    pixels_int16: np.ndarray,
    z: float | None,
    instance_number: int | None,
    series_uid: str,
    modality: str = "CT",
    slope: float | None = 1.0,
    intercept: float | None = -1024.0,
    orientation: Sequence[float] | None = (1, 0, 0, 0, 1, 0),
    spacing: Sequence[float] = (0.7, 0.7),
    patient_name: str = "PHANTOM^TEST",
    transfer_syntax: str = ExplicitVRLittleEndian,
    with_pixels: bool = True,
    position: Sequence[float] | None = None,
    **extra,
) -> Path:
    """Write one CT slice; ``None`` for z / instance_number / slope / intercept / orientation omits the tag.

    ImagePositionPatient is ORIGIN + z · normal unless ``position`` gives it explicitly.

    ``transfer_syntax`` may be a compressed one pydicom can encode (e.g. RLELossless);
    ``extra`` sets further tags by keyword (``SliceThickness=1.25``).
    """
    path = Path(path)
    pixels = np.asarray(pixels_int16, dtype=np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if transfer_syntax == ImplicitVRLittleEndian else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = "PID-" + patient_name.replace("^", "-")
    ds.PatientBirthDate = "19700101"
    ds.InstitutionName = "Test Hospital " + patient_name
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    if orientation is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    if position is not None:
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    elif z is not None:
        cosines = np.asarray(orientation if orientation is not None else (1, 0, 0, 0, 1, 0), dtype=float)
        normal = np.cross(cosines[:3], cosines[3:])
        normal = normal / np.linalg.norm(normal)
        ds.ImagePositionPatient = [round(float(v), 4) for v in np.asarray(ORIGIN) + z * normal]
    if instance_number is not None:
        ds.InstanceNumber = int(instance_number)
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    if with_pixels:
        ds.PixelData = pixels.tobytes()
        if transfer_syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            ds.compress(transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def phantom_volume(n: int = 10, size: int = 16, seed: int = 0) -> np.ndarray:
    """(n, size, size) int16 stored values, each slice distinct (slice i has mean ≈ 100·i)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 50, size=(n, size, size))
    return (base + 100 * np.arange(n)[:, None, None]).astype(np.int16)


def write_series(
    folder: str | Path,
    volume: np.ndarray,
    series_uid: str | None = None,
    z0: float = 0.0,
    dz: float = 1.25,
    positions: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    instance_numbers: Sequence[int | None] | None = None,
    **kwargs,
) -> list[Path]:
    """Write ``volume`` (n, rows, cols) as one series; slice i at z0 + i·dz, file ``{i}.dcm``.

    ``positions``, ``names`` and ``instance_numbers`` override the defaults per slice;
    other keyword arguments go to :func:`write_ct_slice`.
    """
    folder = Path(folder)
    series_uid = series_uid or generate_uid()
    n = len(volume)
    positions = list(positions) if positions is not None else [z0 + i * dz for i in range(n)]
    names = list(names) if names is not None else [f"{i}.dcm" for i in range(n)]
    instance_numbers = list(instance_numbers) if instance_numbers is not None else [i + 1 for i in range(n)]
    return [
        write_ct_slice(folder / names[i], volume[i], positions[i], instance_numbers[i], series_uid, **kwargs)
        for i in range(n)
    ]


def truncate(path: str | Path, keep_bytes: int) -> Path:
    """Cut a file to its first ``keep_bytes`` bytes (a damaged download)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])
    return path


def read_patient_name(path: str | Path) -> str:
    """The PatientName written into a file (for privacy assertions)."""
    return str(pydicom.dcmread(path, stop_before_pixels=True).PatientName)
