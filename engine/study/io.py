"""The study file: one JSON document per study, read by the HTML report.

Schema (``format`` and ``version`` are checked on reading; keys in this order)::

    {
      "format": "nextick.study",
      "version": 1,
      "rf_annual": 0.05,                       annual risk-free rate the PML and CAPM used
      "models": {
        "<model name>": {
          "pml": {                             the Pretrained Market Line (engine.study.pml.PML)
            "slope": float,                    Foundation Sharpe ratio, daily
            "slope_se": float,
            "t_stat": float,
            "intercept_daily": float,          rf per day (fixed, not estimated)
            "r2": float,                       1 - SSE/SST; can be negative
            "n": int,                          configurations
            "points": [                        one per configuration (engine.study.risk)
              {"config_id": str, "mean_daily_return": float, "total_std": float,
               "priced_std": float, "epistemic_std": float}, ...
            ]
          },
          "rolling_pml": [                     windows in time order
            {"start_day": str, "end_day": str, "slope": float, "slope_se": float, "r2": float}, ...
          ],
          "capm": [                            one per configuration (engine.study.capm.CAPM)
            {"config_id": str, "alpha_daily": float, "alpha_t": float, "beta": float,
             "beta_t": float, "n": int, "lags": int}, ...
          ],
          "decay": [                           one per resolution (engine.study.decay.LagProfile)
            {"resolution": "100ms" | "1s" | "1min" | "5min" | "<n>ns", "lags": [int, ...],
             "corr": [float, ...]}, ...
          ]
        }, ...
      }
    }

Every float may be ``null``: NaN and infinities (an undefined statistic, see each module) are
written as null, since JSON has no such numbers, and read back as NaN. Returns and stds are daily
fractions (0.01 = 1% a day), not percent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from engine.study._inputs import StudyInputError, rf_daily
from engine.study.capm import CAPM
from engine.study.decay import LagProfile, resolution_label
from engine.study.pml import PML, RollingPML
from engine.study.risk import RiskDecomposition

FORMAT = "nextick.study"
VERSION = 1


class PMLPoint(msgspec.Struct):
    config_id: str
    mean_daily_return: float
    total_std: float
    priced_std: float
    epistemic_std: float


class PMLSection(msgspec.Struct):
    slope: float
    slope_se: float
    t_stat: float
    intercept_daily: float
    r2: float
    n: int
    points: list[PMLPoint]


class CAPMRow(msgspec.Struct):
    config_id: str
    alpha_daily: float
    alpha_t: float
    beta: float
    beta_t: float
    n: int
    lags: int


class DecayRow(msgspec.Struct):
    resolution: str
    lags: list[int]
    corr: list[float]


class ModelStudy(msgspec.Struct):
    """One model's results: the ``models`` entry of the schema in the module docstring."""

    pml: PMLSection
    rolling_pml: list[RollingPML] = []
    capm: list[CAPMRow] = []
    decay: list[DecayRow] = []


class StudyFile(msgspec.Struct):
    format: str
    version: int
    rf_annual: float
    models: dict[str, ModelStudy]


def pml_section(fit: PML, risk: RiskDecomposition, config_ids: Sequence[str]) -> PMLSection:
    """The ``pml`` entry from a fit and the decomposition it was fitted on, one id per configuration."""
    ids = [str(c) for c in config_ids]
    if len(ids) != risk.mean_daily_return.size:
        raise StudyInputError(
            f"config_ids has {len(ids)} ids but the decomposition has {risk.mean_daily_return.size} configurations; "
            "pass one id per configuration, in the order of the returns' first axis"
        )
    points = [
        PMLPoint(cid, float(m), float(t), float(p), float(e))
        for cid, m, t, p, e in zip(ids, risk.mean_daily_return, risk.total_std, risk.priced_std, risk.epistemic_std)
    ]
    return PMLSection(fit.slope, fit.slope_se, fit.t_stat, fit.intercept_daily, fit.r2, fit.n, points)


def capm_row(config_id: str, c: CAPM) -> CAPMRow:
    return CAPMRow(str(config_id), c.alpha_daily, c.alpha_t, c.beta, c.beta_t, c.n, c.lags)


def decay_row(profile: LagProfile) -> DecayRow:
    return DecayRow(resolution_label(profile.resolution_ns), list(profile.lags), list(profile.corr))


def write_study_json(path: str | Path, models: Mapping[str, ModelStudy], rf_annual: float = 0.05) -> Path:
    """Write ``models`` (name -> ``ModelStudy``) as the schema of the module docstring; NaN and
    infinities become null. The file is replaced whole (written beside it, then renamed), so a
    reader never sees half of one."""
    bad = [name for name, m in models.items() if not isinstance(m, ModelStudy)]
    if bad:
        raise StudyInputError(f"models[{bad[0]!r}] is not a ModelStudy; build one per model (see engine.study.io)")
    rf_daily(rf_annual, 252)  # the same check the fits make: a finite annual rate > -1
    doc = StudyFile(FORMAT, VERSION, float(rf_annual), dict(models))
    # msgspec writes nan and +-inf as null, which is what the schema asks for.
    data = msgspec.json.format(msgspec.json.encode(doc), indent=1)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data + b"\n")
    tmp.replace(path)
    return path


def _nulls_to_nan(x: Any) -> Any:
    if x is None:
        return math.nan
    if isinstance(x, dict):
        return {k: _nulls_to_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nulls_to_nan(v) for v in x]
    return x


def read_study_json(path: str | Path) -> StudyFile:
    """Read a file ``write_study_json`` wrote; null floats come back as NaN. Raises
    ``StudyInputError`` naming the file and the field for another format, version or shape."""
    path = Path(path)
    try:
        raw = msgspec.json.decode(path.read_bytes())
    except msgspec.DecodeError as exc:
        raise StudyInputError(f"{path} is not JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise StudyInputError(f"{path} is not a study file: format is {got!r}, expected {FORMAT!r}")
    if raw.get("version") != VERSION:
        raise StudyInputError(
            f"{path} is study format version {raw.get('version')!r}; this nextick reads version {VERSION}: "
            "rerun the study with this version"
        )
    # Every null in the schema is a float that was NaN or infinite; an int or string field given
    # null still fails below, naming the field.
    try:
        return msgspec.convert(_nulls_to_nan(raw), StudyFile)
    except msgspec.ValidationError as exc:
        raise StudyInputError(f"{path}: {exc}") from None
