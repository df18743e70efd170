"""DICOM writing of one phantom series: CT Image Storage, explicit VR little endian, one file per slice.

Stored = HU + 1024 with RescaleIntercept (0028,1052) -1024 and BitsStored (0028,0101) 12. UIDs are
derived from the seed, so the same seed writes the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfake.data.phantom.anatomy import ScanAnatomy


STORED_OFFSET = 1024         # stored = HU + 1024, RescaleIntercept -1024
STORED_MAX = 4095            # BitsStored 12


def _ds_number(value: float) -> str:
    """Decimal String (max 16 characters)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


@dataclass(frozen=True)
class SeriesIdentity:
    key: tuple[str, ...]     # entropy for the UIDs
    patient_number: str
    birth_date: str
    study_date: str
    sex: str
    series_number: int


def series_uid(ident: SeriesIdentity, *parts: str) -> str:
    """Deterministic UID: the same seed and series give the same UID (pydicom hashes the sources)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["medfake-phantom", *ident.key, *parts])


def write_series(folder: Path, volume: np.ndarray, anatomy: ScanAnatomy, ident: SeriesIdentity,
                  file_name: Callable[[int], str]) -> None:
    """Write one CT series, one file per slice; file 0 is the top (head) slice."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    def uid(*parts: str) -> str:
        return series_uid(ident, *parts)

    g = anatomy.geometry
    folder.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ident.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = f"PHACC{ident.patient_number}"
    ds.Modality = "CT"
    ds.Manufacturer = "medfake phantom"
    ds.InstitutionName = "Phantom General Hospital"
    ds.ReferringPhysicianName = ""
    ds.ManufacturerModelName = "synthetic chest phantom"
    ds.StudyDescription = "CT CHEST (synthetic phantom)"
    ds.SeriesDescription = "AXIAL"
    ds.PatientName = f"PHANTOM^SYNTHETIC^{ident.patient_number}"
    ds.PatientID = f"PHANTOM-{ident.patient_number}"
    ds.PatientBirthDate = ident.birth_date
    ds.PatientSex = ident.sex
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _ds_number(g.slice_mm)
    ds.SpacingBetweenSlices = _ds_number(g.slice_mm)
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.ConvolutionKernel = "STANDARD"
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = "1"
    ds.SeriesNumber = ident.series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uid("frame")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = g.size
    ds.PixelSpacing = [_ds_number(g.pixel_mm)] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = str(-STORED_OFFSET)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    corner = _ds_number(float(g.coordinates_mm[0]))
    top_z = 0.0  # z of slice 0 in mm; patient z grows toward the head, so later files have lower z
    for index in range(volume.shape[0]):
        sop = uid("sop", str(index))
        z = top_z - index * g.slice_mm
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [corner, corner, _ds_number(z)]
        ds.SliceLocation = _ds_number(z)
        stored = np.clip(np.rint(volume[index]) + STORED_OFFSET, 0, STORED_MAX).astype("<u2")
        ds.add_new(0x7FE00010, "OW", stored.tobytes())
        ds.save_as(folder / file_name(index), enforce_file_format=True)


def make_identity(rng: np.random.Generator, key: tuple[str, ...], patient_number: str,
              series_number: int) -> SeriesIdentity:
    birth = f"{int(rng.integers(1935, 1975))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    study = f"{int(rng.integers(2000, 2011))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    return SeriesIdentity(key, patient_number, birth, study, "MF"[int(rng.integers(0, 2))], series_number)
