"""The CT-GAN tampered-scan data set (Mirsky et al., 2019): scan folders and label CSVs.

Two layouts are accepted (DESIGN §3)::

    <root>/CT_Scans/EXP1_blind/<uuid>/0.dcm … N-1.dcm      <root>/labels_exp1.csv
    <root>/CT_Scans/EXP2_open/<uuid>/…                      <root>/labels_exp2.csv
    <root>/Tampered Scans/Experiment 1 - Blind/<uuid>/…     (the original archive)
    <root>/Tampered Scans/Experiment 2 - Open/<uuid>/…

Scans are keyed by (experiment, uuid) — "EXP1"/"EXP2" and the folder name — because uuids
repeat across experiments. Label rows are ``type,uuid,slice,x,y``: ``slice`` is the 0-based
file number, ``x`` the column and ``y`` the row; FB (cancer removed) and FM (cancer injected)
are tampered, TB and TM are not.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from medfake.core.contract import LABEL_TYPES, TAMPERED_TYPES
from medfake.core.errors import UserError
from medfake.io.series import DICOMSeries

EXPERIMENTS = ("EXP1", "EXP2")
LABEL_COLUMNS = ("type", "uuid", "slice", "x", "y")
# Known layouts: scan parent folder → experiment folder names. Other spellings of the experiment
# folders ("exp1", "Experiment 1") are recognised by their number.
LAYOUTS = {
    "CT_Scans": {"EXP1": "EXP1_blind", "EXP2": "EXP2_open"},
    "Tampered Scans": {"EXP1": "Experiment 1 - Blind", "EXP2": "Experiment 2 - Open"},
}
_EXPERIMENT_PATTERN = re.compile(r"^(?:exp(?:eriment)?)?[\s_-]*(\d+)(?!\d)", re.IGNORECASE)
_INTEGER_PATTERN = re.compile(r"^[+-]?\d+(?:\.0*)?$")


def normalize_experiment(value: str | int) -> str:
    """'EXP1' for 1, '1', 'exp1', 'EXP1_blind' or 'Experiment 1 - Blind'."""
    match = _EXPERIMENT_PATTERN.match(str(value).strip())
    name = f"EXP{int(match.group(1))}" if match else None
    if name not in EXPERIMENTS:
        raise UserError(f"unknown CT-GAN experiment {value!r}: expected one of {', '.join(EXPERIMENTS)} (or 1, 2)")
    return name


def scan_id(experiment: str | int, uuid: str) -> str:
    """Scan name for messages to the user, e.g. 'EXP1/1280' (the data set's own scan number, no
    DICOM identifier); tracked artefacts use :func:`medfake.io.privacy.deidentify` instead."""
    return f"{normalize_experiment(experiment)}/{uuid}"


def experiment_folders(root: str | os.PathLike) -> dict[str, Path]:
    """Experiment → scan folder of a CT-GAN root, for whichever layout the root uses."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"CT-GAN root {root} is not a folder")
    found: dict[str, Path] = {}
    for parent_name in LAYOUTS:
        parent = root / parent_name
        if not parent.is_dir():
            continue
        for child in sorted(parent.iterdir()):
            match = _EXPERIMENT_PATTERN.match(child.name)
            if not child.is_dir() or not match:
                continue
            experiment = f"EXP{int(match.group(1))}"
            if experiment in EXPERIMENTS:
                found.setdefault(experiment, child)
    if not found:
        looked = ", ".join(f"{parent}/{name}" for parent, names in LAYOUTS.items() for name in names.values())
        raise UserError(f"no CT-GAN scan folders under {root}: looked for {looked}")
    return dict(sorted(found.items()))


def find_scans(root: str | os.PathLike) -> dict[tuple[str, str], Path]:
    """(experiment, uuid) → scan folder; non-numeric entries of an experiment folder are skipped."""
    scans: dict[tuple[str, str], Path] = {}
    for experiment, folder in experiment_folders(root).items():
        entries = [entry for entry in folder.iterdir() if entry.is_dir() and entry.name.isdigit()]
        for entry in sorted(entries, key=lambda entry: (int(entry.name), entry.name)):
            scans[(experiment, entry.name)] = entry
    return scans


def label_csv_candidates(root: str | os.PathLike, experiment: str, folder: Path | None) -> list[Path]:
    """Where an experiment's labels may be: the root first, then inside the experiment folder."""
    number = experiment[len("EXP"):]
    candidates = [Path(root) / f"labels_exp{number}.csv"]
    if folder is not None:
        candidates += [folder / f"labels_exp{number}.csv", folder / "labels.csv"]
    return candidates


def _unsafe_uuid(uuid: str) -> bool:
    """A uuid that could leave the scan folder (``..``, absolute, path separators, drives)."""
    return (
        not uuid
        or uuid in {".", ".."}
        or "/" in uuid
        or "\\" in uuid
        or ":" in uuid
        or "\0" in uuid
        or os.path.isabs(uuid)
    )


def _match_uuid(uuid: str, folder_names: set[str]) -> str | None:
    """The scan folder a CSV uuid means: the exact spelling, else the same number
    ('1280', 1280.0 and '01280' all mean folder '1280'; 12 means '0012')."""
    if uuid in folder_names:
        return uuid
    if not _INTEGER_PATTERN.match(uuid):
        return None
    number = int(float(uuid))
    matches = sorted(name for name in folder_names if int(name) == number)
    return matches[0] if matches else None


def _parse_int(value: str, column: str, where: str) -> int:
    text = (value or "").strip()
    if not _INTEGER_PATTERN.match(text):
        raise UserError(f"{where}: {column} {text!r} is not an integer")
    number = int(float(text))
    if number < 0:
        raise UserError(f"{where}: {column} {number} is negative")
    return number


def _read_label_file(csv_path: Path, experiment: str, uuids: set[str], scan_folder: Path) -> list[dict]:
    try:
        handle = open(csv_path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"{csv_path}: cannot read labels ({exc.strerror})") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise UserError(f"{csv_path}: empty file, expected the header {','.join(LABEL_COLUMNS)}")
        names = [name.strip().lower() for name in header]
        missing = [column for column in LABEL_COLUMNS if column not in names]
        if missing:
            raise UserError(
                f"{csv_path}: missing columns {', '.join(missing)} (found {', '.join(names) or 'none'}; "
                f"expected {','.join(LABEL_COLUMNS)})"
            )
        position = {column: names.index(column) for column in LABEL_COLUMNS}
        records = []
        for fields in reader:
            if not any(field.strip() for field in fields):
                continue
            row = reader.line_num - 1
            where = f"{csv_path}: row {row}"
            if len(fields) < len(names):
                fields = fields + [""] * (len(names) - len(fields))
            value = {column: fields[index].strip() for column, index in position.items()}
            label_type = value["type"].upper()
            if label_type not in LABEL_TYPES:
                raise UserError(f"{where}: unknown type {value['type']!r} (expected {', '.join(LABEL_TYPES)})")
            uuid = value["uuid"]
            if _unsafe_uuid(uuid):
                raise UserError(f"{where}: uuid {uuid!r} is not a scan folder name (no paths allowed)")
            folder_name = _match_uuid(uuid, uuids)
            if folder_name is None:
                raise UserError(f"{where}: uuid {uuid!r} has no scan folder in {scan_folder}")
            records.append(
                {
                    "experiment": experiment,
                    "type": label_type,
                    "uuid": folder_name,
                    "slice": _parse_int(value["slice"], "slice", where),
                    "x": _parse_int(value["x"], "x", where),
                    "y": _parse_int(value["y"], "y", where),
                    "tampered": label_type in TAMPERED_TYPES,
                    "csv_row": row,
                    "csv_file": str(csv_path),
                }
            )
    return records


def read_labels(root: str | os.PathLike) -> pd.DataFrame:
    """All label rows of a CT-GAN root, checked (types, integers, uuids naming scan folders).

    Columns: experiment, type, uuid (the folder's spelling), slice, x, y (int), tampered (bool),
    csv_row (1-based data row), csv_file. Slice ranges are checked when a scan is opened
    (:func:`validate_label_slices`), so reading labels stays header-free.
    """
    root = Path(root)
    folders = experiment_folders(root)
    scans = find_scans(root)
    records: list[dict] = []
    looked: list[Path] = []
    found_any = False
    for experiment in EXPERIMENTS:
        folder = folders.get(experiment)
        candidates = label_csv_candidates(root, experiment, folder)
        looked += candidates
        csv_path = next((path for path in candidates if path.is_file()), None)
        if csv_path is None:
            continue
        found_any = True
        if folder is None:
            warnings.warn(f"{csv_path}: no scan folder for {experiment}, its labels are not used", stacklevel=2)
            continue
        uuids = {name for (exp, name) in scans if exp == experiment}
        records += _read_label_file(csv_path, experiment, uuids, folder)
    if not found_any:
        raise UserError(f"no CT-GAN labels CSV found: looked for {', '.join(str(path) for path in looked)}")
    columns = ["experiment", "type", "uuid", "slice", "x", "y", "tampered", "csv_row", "csv_file"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    return frame.astype(
        {"experiment": object, "type": object, "uuid": object, "slice": "int64", "x": "int64", "y": "int64",
         "tampered": bool, "csv_row": "int64", "csv_file": object}
    )


def scan_folder(root: str | os.PathLike, experiment: str | int, uuid: str) -> Path:
    """The folder of scan (experiment, uuid); UserError when it does not exist or leaves the root."""
    experiment = normalize_experiment(experiment)
    uuid = str(uuid).strip()
    if _unsafe_uuid(uuid):
        raise UserError(f"uuid {uuid!r} is not a scan folder name (no paths allowed)")
    folders = experiment_folders(root)
    if experiment not in folders:
        raise UserError(f"CT-GAN root {root} has no {experiment} scan folder")
    folder = folders[experiment] / uuid
    if not folder.is_dir():
        raise UserError(f"scan {experiment}/{uuid}: no folder {folder}")
    return folder


def open_scan(root: str | os.PathLike, experiment: str | int, uuid: str) -> DICOMSeries:
    """Read a scan's headers and sort its slices by position (pixels are decoded on demand).

    Callers report :func:`check_file_order` with the de-identified scan id.
    """
    return DICOMSeries.open(scan_folder(root, experiment, uuid))


def check_file_order(series: DICOMSeries) -> str | None:
    """Why a scan's file numbers (what label ``slice`` refers to) can't be trusted as slice order, or None."""
    if series.file_order is None:
        return "file names are not numbers, so label slice numbers cannot be matched to files"
    if series.ordering != "position":
        return "slices have no usable ImagePositionPatient (0020,0032): file order not checked against positions"
    if series.file_order == "mixed":
        return series.file_order_problem()
    return None


def validate_label_slices(
    labels: pd.DataFrame, series: DICOMSeries, experiment: str | int | None = None, uuid: str | None = None
) -> None:
    """Check label rows of one scan against its slices: ``slice`` must be a file number present
    in the series, ``x``/``y`` inside the image. Rows are filtered by experiment/uuid when given."""
    rows = labels
    if experiment is not None:
        rows = rows[rows["experiment"] == normalize_experiment(experiment)]
    if uuid is not None:
        rows = rows[rows["uuid"] == str(uuid)]
    present = {number for number in series.file_numbers if number is not None}
    # plain columns rather than itertuples, which builds a namedtuple class per call (once per scan)
    columns = ("csv_file", "csv_row", "experiment", "uuid", "slice", "x", "y")
    for csv_file, csv_row, exp, folder, number, x, y in zip(*(rows[column] for column in columns)):
        where = f"{csv_file}: row {csv_row}"
        scan = f"{exp}/{folder}"
        if number not in present:
            span = f"file numbers {min(present)}–{max(present)}" if present else "no numbered files"
            skipped = [name for name, _ in series.skipped if Path(name).stem == str(number)]
            note = f"; {skipped[0]} was skipped as unreadable" if skipped else ""
            raise UserError(f"{where}: slice {number} is not a slice of scan {scan} ({span}{note})")
        if x >= series.columns or y >= series.rows:
            raise UserError(
                f"{where}: x {x}, y {y} is outside the {series.columns}×{series.rows} image of scan {scan}"
            )


def slices_around(series: DICOMSeries, file_number: int, radius: int) -> list[int]:
    """Sorted indices of the labelled slice and its neighbours within ±radius along the slice normal
    (the study's ±5), clipped at the ends of the scan."""
    centre = series.index_of_file_number(file_number)
    return list(range(max(0, centre - radius), min(len(series), centre + radius + 1)))


def tampered_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Only the FB/FM (tampered) rows."""
    return labels[labels["tampered"].to_numpy(dtype=bool)]


def label_counts(labels: pd.DataFrame) -> dict[str, int]:
    """Rows per type, e.g. {'FB': 30, 'FM': 40, 'TB': 33, 'TM': 30}."""
    counts = labels["type"].value_counts()
    return {label_type: int(counts.get(label_type, 0)) for label_type in LABEL_TYPES} | {
        "total": int(np.sum(counts.to_numpy()))
    }
