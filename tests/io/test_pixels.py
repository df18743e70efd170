"""medfake.io.pixels: decoders available or missing, and the one-line hint for a missing codec."""

from __future__ import annotations

import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from medfake.core.errors import DICOMError
from medfake.io import pixels
from medfake.io.series import DICOMSeries
from dicom_factory import phantom_volume, write_series


def test_decoder_support():
    assert pixels.decoder_support(RLELossless) == "available"
    assert pixels.decoder_support(ExplicitVRLittleEndian) == "available"
    assert pixels.decoder_support("1.2.3.4.5.6") == "unsupported"
    assert pixels.transfer_syntax_name(RLELossless) == "RLE Lossless (1.2.840.10008.1.2.5)"


def test_missing_codec_gives_one_line_with_the_extra(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    write_series(tmp_path, phantom_volume(2), transfer_syntax=RLELossless)
    series = DICOMSeries.open(tmp_path)
    monkeypatch.setattr(get_decoder(RLELossless), "_available", {})  # as if no plugin were installed
    with pytest.raises(DICOMError) as info:
        series.read_hu([0])
    message = str(info.value)
    assert "\n" not in message
    assert "RLE Lossless (1.2.840.10008.1.2.5)" in message
    assert "pip install 'medfake[codecs]'" in message
