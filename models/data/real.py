"""Real-world univariate series for held-out evaluation, from statsmodels' bundled datasets.

statsmodels is an optional dependency (the ``eval`` extra); it is imported lazily, so this
module can be imported without it and ``real_series()`` raises a clear ``ImportError``.
The data ship inside the statsmodels package: nothing is downloaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_MISSING = "pip install statsmodels (the eval extra) to evaluate on real series"


@dataclass(frozen=True, eq=False)
class RealSeries:
    """A named real series: values (T,) float64 in original units, time order, no NaN."""

    name: str
    values: np.ndarray
    season: int | None
    source: str
    description: str


def _dataset(name: str) -> Any:
    """``statsmodels.datasets.<name>``, or an ImportError that says how to install it."""
    try:
        return importlib.import_module(f"statsmodels.datasets.{name}")
    except ImportError as e:
        raise ImportError(_MISSING) from e


def _frozen(x: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(x, dtype=np.float64)
    assert out.ndim == 1 and np.isfinite(out).all(), "real series must be finite and 1-D"
    out.flags.writeable = False
    return out


def _interpolate(x: np.ndarray) -> np.ndarray:
    """Fill NaNs by linear interpolation between the neighbouring observed points."""
    x = np.asarray(x, dtype=np.float64)
    bad = np.isnan(x)
    assert not bad[0] and not bad[-1], "cannot interpolate a missing first or last value"
    idx = np.arange(len(x))
    return np.where(bad, np.interp(idx, idx[~bad], x[~bad]), x)


def sunspots() -> RealSeries:
    """Yearly sunspot numbers 1700-2008 (309 points)."""
    data = _dataset("sunspots").load_pandas().data
    return RealSeries(
        name="sunspots",
        values=_frozen(data["SUNACTIVITY"].to_numpy()),
        season=None,
        source="statsmodels.datasets.sunspots: yearly sunspot numbers 1700-2008 from the National "
        "Geophysical Data Center (NOAA), http://www.ngdc.noaa.gov/stp/solar/solarda3.html",
        description="yearly sunspot numbers, 1700-2008 (309 years); the ~11-year solar cycle varies "
        "in length (about 9-14 years), so it is not an integer season",
    )


def co2() -> RealSeries:
    """Mauna Loa weekly atmospheric CO2, March 1958 - December 2001 (2284 weeks)."""
    data = _dataset("co2").load_pandas().data
    raw = data["co2"].to_numpy(dtype=np.float64)
    n_missing = int(np.isnan(raw).sum())
    return RealSeries(
        name="co2",
        values=_frozen(_interpolate(raw)),
        season=52,
        source="statsmodels.datasets.co2: Keeling, C.D. and T.P. Whorf (2004), atmospheric CO2 at "
        "Mauna Loa Observatory, Hawaii, Scripps Institution of Oceanography, via the Carbon Dioxide "
        "Information Analysis Center (CDIAC), Oak Ridge National Laboratory",
        description=f"weekly mean CO2 (ppmv), Mauna Loa, 1958-03-29 to 2001-12-29 ({len(raw)} weeks); "
        f"{n_missing} missing weeks filled by linear interpolation; yearly cycle ~52 weeks",
    )


def elnino() -> RealSeries:
    """Niño 1+2 monthly sea surface temperature 1950-2010 (61 years x 12 months, 732 points)."""
    data = _dataset("elnino").load_pandas().data
    months = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    years = data["YEAR"].to_numpy()
    assert (np.diff(years) == 1).all(), "El Niño rows must be consecutive years"
    return RealSeries(
        name="elnino",
        values=_frozen(data[months].to_numpy(dtype=np.float64).ravel()),  # row-major = time order
        season=12,
        source="statsmodels.datasets.elnino: NOAA National Weather Service (Climate Prediction "
        "Center), ERSST.V3B, Niño 1+2 index, http://www.cpc.ncep.noaa.gov/data/indices/",
        description="monthly average sea surface temperature (°C), Pacific Ocean 0-10°S, 90-80°W, "
        "1950-2010, 61 years x 12 months flattened in time order; season 12",
    )


def nile() -> RealSeries:
    """Yearly Nile flow at Aswan 1871-1970 (100 points)."""
    data = _dataset("nile").load_pandas().data
    return RealSeries(
        name="nile",
        values=_frozen(data["volume"].to_numpy()),
        season=None,
        source="statsmodels.datasets.nile: annual flow of the Nile at Aswan, first analysed in "
        "Cobb, G. W. (1978), 'The Problem of the Nile: Conditional Solution to a Changepoint "
        "Problem', Biometrika 65(2), 243-51",
        description="yearly Nile discharge at Aswan (10^8 m^3), 1871-1970 (100 years); apparent "
        "changepoint near 1898",
    )


def real_series() -> list[RealSeries]:
    """The real evaluation series: sunspots, co2, elnino, nile (see each ``source``).

    Raises ImportError ("pip install statsmodels (the eval extra) ...") without statsmodels.
    """
    return [sunspots(), co2(), elnino(), nile()]


def write_csv(series: RealSeries, path: Path) -> None:
    """The series as a CSV with a header and a text step column (``step,<name>``, the way a
    date column would sit there), for ``memserve train --data``; the step column is ignored."""
    lines = ["step," + series.name] + [f"t{i},{v:.6g}" for i, v in enumerate(series.values)]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m models.data.real OUT_DIR``: write each real series as OUT_DIR/<name>.csv."""
    import sys

    out = Path((argv if argv is not None else sys.argv[1:] or ["."])[0])
    out.mkdir(parents=True, exist_ok=True)
    for s in real_series():
        write_csv(s, out / f"{s.name}.csv")
        print(f"{out / (s.name + '.csv')}: {len(s.values)} points ({s.source.split(':')[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
