"""Calibration files: ma_hmm's per-symbol tuning as TOML or JSON.

A table of symbol -> {confidence_gain, quote_multiplier, cooldown_scale}; the ``*`` entry
applies to symbols without their own. Read when a strategy is composed (its starting
calibrations) and by the calibration worker, which turns every change into events.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from strategies.ma_hmm import Calibration, Calibrations


class CalibrationError(ValueError):
    """A calibration file that cannot be used; one line naming the file."""


def parse_calibrations(data: bytes, path: Path) -> Calibrations:
    """A file's bytes (JSON when the name ends in ``.json``, else TOML) as calibrations."""
    try:
        if path.suffix.lower() == ".json":
            table = msgspec.json.decode(data, type=dict[str, Calibration])
        else:
            table = msgspec.convert(tomllib.loads(data.decode()), dict[str, Calibration])
    except (msgspec.DecodeError, msgspec.ValidationError, tomllib.TOMLDecodeError) as exc:
        raise CalibrationError(f"calibration {path}: {exc}") from None
    except UnicodeDecodeError:
        raise CalibrationError(f"calibration {path}: not UTF-8 text") from None
    return Calibrations.of_table(table)


def read_calibrations(path: Path) -> Calibrations:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CalibrationError(f"calibration {path}: {exc.strerror or exc}") from None
    return parse_calibrations(data, path)
