"""How a series is assembled from its files' headers: one CT series, one image size, slice order
and the problems noticed on the way (used by :class:`medfake.io.series.DICOMSeries`).

Slices are ordered by ImagePositionPatient (0020,0032) projected on the slice normal (the cross
product of the two ImageOrientationPatient (0020,0037) direction cosines), falling back to
InstanceNumber (0020,0013) and then to the number in the file name.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from medfake.core.errors import DICOMError
from medfake.io.header import SliceHeader, natural_key
from medfake.io.transforms import slice_normal

DUPLICATE_TOLERANCE_MM = 0.01
GAP_FACTOR = 1.5
UNEVEN_TOLERANCE = 0.01  # relative spread of slice spacings still counted as even


def keep_one_series(headers, skipped, problems, source) -> list[SliceHeader]:
    """Keep the largest CT series of a folder; a folder with no CT series is an error."""
    groups: dict[str, list[SliceHeader]] = {}
    for header in headers:
        groups.setdefault(header.series_uid, []).append(header)
    ranked = sorted(groups.values(), key=lambda group: (-len(group), group[0].series_uid))
    ct_groups = [group for group in ranked if group[0].modality == "CT"]
    if not ct_groups:
        modality = ranked[0][0].modality or "missing"
        raise DICOMError(f"{source}: Modality is {modality}, not CT (tag 0008,0060); medfake reads CT series only")
    kept = ct_groups[0]
    others = [group for group in ranked if group is not kept]
    if others:
        dropped = sum(len(group) for group in others)
        modalities = ", ".join(sorted({group[0].modality or "?" for group in others}))
        problems.append(
            f"folder holds {len(groups)} series (SeriesInstanceUID): kept the largest CT series "
            f"({len(kept)} files), skipped {dropped} files of {len(others)} other series ({modalities})"
        )
        for group in others:
            for header in group:
                skipped.append((header.path.name, f"belongs to another series (Modality {header.modality or '?'})"))
    return kept


def keep_majority_size(headers, skipped, problems, source) -> list[SliceHeader]:
    sizes = Counter((h.rows, h.columns) for h in headers)
    if len(sizes) == 1:
        return headers
    (size, count), = sizes.most_common(1)
    listing = ", ".join(f"{r}×{c} ({n} files)" for (r, c), n in sizes.most_common())
    if count * 2 <= len(headers):
        raise DICOMError(f"{source}: mixed image sizes (Rows×Columns) {listing}; no size holds a majority")
    problems.append(f"mixed image sizes (Rows×Columns) {listing}: kept {size[0]}×{size[1]}")
    kept = []
    for header in headers:
        if (header.rows, header.columns) == size:
            kept.append(header)
        else:
            skipped.append(
                (header.path.name, f"image size {header.rows}×{header.columns} differs from the series' {size[0]}×{size[1]}")
            )
    return kept


def _instance_key(header: SliceHeader):
    number = header.instance_number
    return (number is None, number if number is not None else 0, natural_key(header.path.name))


def order_slices(headers, skipped, problems) -> tuple[list[SliceHeader], np.ndarray, str]:
    """Sort by position along the normal, else InstanceNumber, else file number/name."""
    with_geometry = [h for h in headers if h.position is not None and h.orientation is not None]
    normal = None
    if len(with_geometry) == len(headers):
        orientations = Counter(h.orientation for h in headers)
        main_orientation = orientations.most_common(1)[0][0]
        try:
            normal = slice_normal(main_orientation)
        except ValueError as exc:
            problems.append(f"ImageOrientationPatient (0020,0037) unusable ({exc}): slices not ordered by position")
        else:
            alignment = {o: abs(float(np.dot(_normal_or_zero(o), normal))) for o in orientations}
            tilted = [h for h in headers if alignment[h.orientation] < 0.999]
            if tilted:
                problems.append(
                    f"ImageOrientationPatient (0020,0037) differs by more than 2.5° in {len(tilted)} files"
                )
    elif with_geometry:
        problems.append(
            f"ImagePositionPatient/ImageOrientationPatient (0020,0032/0037) missing in "
            f"{len(headers) - len(with_geometry)} of {len(headers)} files: slices not ordered by position"
        )
    if normal is not None:
        raw = np.array([h.position for h in headers], dtype=np.float64) @ normal
        order = sorted(range(len(headers)), key=lambda i: (raw[i], _instance_key(headers[i])))
        ordered = [headers[i] for i in order]
        positions = raw[order]
        ordered, positions = _drop_duplicate_positions(ordered, positions, skipped, problems)
        return ordered, positions, "position"
    nan_positions = np.full(len(headers), np.nan)
    if all(h.instance_number is not None for h in headers):
        ordered = sorted(headers, key=_instance_key)
        repeated = [n for n, c in Counter(h.instance_number for h in headers).items() if c > 1]
        if repeated:
            problems.append(f"InstanceNumber (0020,0013) repeated for {len(repeated)} values, e.g. {sorted(repeated)[0]}")
        if not with_geometry:
            problems.append("no ImagePositionPatient (0020,0032): slices ordered by InstanceNumber")
        return ordered, nan_positions, "instance"
    ordered = sorted(headers, key=lambda h: (h.file_number is None, h.file_number or 0, natural_key(h.path.name)))
    problems.append("no ImagePositionPatient (0020,0032) nor InstanceNumber (0020,0013): slices ordered by file name")
    return ordered, nan_positions, "file"


def _normal_or_zero(orientation) -> np.ndarray:
    """The slice normal, or a zero vector (never parallel to anything) when unusable."""
    try:
        return slice_normal(orientation)
    except ValueError:
        return np.zeros(3)


def _drop_duplicate_positions(ordered, positions, skipped, problems):
    """Of slices at the same position (within 0.01 mm) keep the one with the lowest InstanceNumber."""
    clusters: list[list[int]] = []
    for i in range(len(ordered)):
        if clusters and positions[i] - positions[clusters[-1][0]] <= DUPLICATE_TOLERANCE_MM:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    keep = []
    for cluster in clusters:
        best = cluster[0] if len(cluster) == 1 else min(cluster, key=lambda i: _instance_key(ordered[i]))
        keep.append(best)
        kept = ordered[best]
        for i in cluster:
            if i == best:
                continue
            dropped = ordered[i]
            problems.append(
                f"duplicated position {positions[best]:.2f} mm: kept {kept.path.name} "
                f"(InstanceNumber {kept.instance_number}), dropped {dropped.path.name} "
                f"(InstanceNumber {dropped.instance_number})"
            )
            skipped.append((dropped.path.name, f"same position as {kept.path.name}, which has the lower InstanceNumber"))
    return [ordered[i] for i in keep], positions[keep]


def report_spacing(headers, positions, problems) -> None:
    if len(headers) < 3 or not np.all(np.isfinite(positions)):
        return
    steps = np.diff(positions)
    median = float(np.median(steps))
    gap_steps = np.flatnonzero(steps > GAP_FACTOR * median)
    for i in gap_steps[:5]:
        problems.append(
            f"gap of {steps[i]:.2f} mm between {headers[i].path.name} and {headers[i + 1].path.name} "
            f"(median spacing {median:.2f} mm)"
        )
    if gap_steps.size > 5:
        problems.append(f"{gap_steps.size - 5} more gaps larger than {GAP_FACTOR}× the median spacing")
    regular = np.delete(steps, gap_steps)
    if regular.size and float(regular.max() - regular.min()) > UNEVEN_TOLERANCE * median + 1e-3:
        problems.append(
            f"uneven slice spacing: {regular.min():.2f}–{regular.max():.2f} mm (median {median:.2f} mm)"
        )


def report_file_numbers(headers, problems) -> None:
    numbers = [h.file_number for h in headers]
    if not numbers or any(number is None for number in numbers):
        return
    present = set(numbers)
    missing = [n for n in range(min(present), max(present) + 1) if n not in present]
    if missing:
        problems.append(
            f"file numbers {min(present)}–{max(present)} have {len(missing)} missing, first {missing[0]}"
        )
