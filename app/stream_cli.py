"""`memserve stream FILE.csv`: stream a CSV series through a MemNet session of a running service.

One row per input point comes out (its one-step prediction of the next value, the prediction
intervals, the anomaly flag), then the forecast rows after the last point, as CSV; `--plot`
draws them. The series is read by models.data.csvseries (header detection, date columns
ignored, gaps refused or filled) and sent through the project's client (memserve.Client), whose
`Stream` keeps each chunk's seq and retries lost replies, so the server applies every chunk
exactly once. Neither imports torch: this runs on any machine that can reach the service.

Exit status: 0 done; 1 the service refused or could not be reached; 2 a bad file or option.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import numpy as np
from tqdm import tqdm

from memserve import Client, PointsReply, ProblemError
from models.data.csvseries import FILLS, CsvSeries, parse_csv

PROG = "memserve stream"
DEFAULT_URL = "http://127.0.0.1:8000"


class UsageError(Exception):
    """A bad file or option: exit status 2."""


def _levels(text: str) -> list[float]:
    try:
        levels = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        msg = f"levels are percents separated by commas, e.g. 80,95; not {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not levels or any(not 0 < v < 100 for v in levels):
        raise argparse.ArgumentTypeError(f"each level is a percent strictly between 0 and 100, not {text!r}")
    return sorted(set(levels))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Stream a CSV time series through a MemNet session of a running memserve: one-step "
        "predictions, prediction intervals and anomaly flags for every point, then a forecast.",
        epilog="Output columns (D = 1): step, value, prediction (of the next value), lower_L and upper_L "
        "per level, anomaly (how many predicted stds the point lies from the prediction made for "
        "it, when it is outside the 99% interval; empty otherwise); with --horizon, forecast rows "
        "follow (step T, T+1, ...: forecast, forecast_lower_L, forecast_upper_L). With D > 1 "
        "columns every name but step ends in _<column>.",
    )
    p.add_argument("file", help="a CSV file (one column per dimension, a header row allowed), or - for stdin")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    p.add_argument("--key", help="API key (default: $MEMSERVE_API_KEY; none when authentication is off)")
    p.add_argument("--model", help="MemNet model of a new session (default: the service's default)")
    p.add_argument("--session", metavar="SID", help="continue this session instead of creating one")
    p.add_argument("--chunk", type=_positive, default=50, metavar="N", help="points per request (default 50)")
    p.add_argument(
        "--horizon", type=_not_negative, default=0, metavar="H", help="forecast H steps after the last point"
    )
    p.add_argument("--level", type=_levels, metavar="L,L", help="interval levels in percent, e.g. 80,95")
    p.add_argument(
        "--fill", choices=FILLS, default="none",
        help="missing values: refuse (none, the default), interpolate (linear) or repeat (previous)",
    )  # fmt: skip
    p.add_argument(
        "--columns", metavar="A,B", help="value columns by header name (default: every numeric one)"
    )
    p.add_argument("--out", metavar="PRED.csv", help="write the rows here (default: stdout)")
    p.add_argument("--plot", metavar="OUT.png", help="draw the series, predictions, bands and forecast")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stderr")
    return p


@dataclass
class Streamed:
    """What came back for the whole series."""

    start: int  # the session's step before the first point (the first row's step)
    values: np.ndarray  # (T, D)
    predictions: list[np.ndarray] = field(default_factory=list)  # per chunk, (t, D)
    intervals: dict[float, tuple[list[np.ndarray], list[np.ndarray]]] = field(default_factory=dict)
    anomalies: dict[tuple[int, int], float] = field(default_factory=dict)  # (step, dim) -> scales
    flagged: bool = False  # the model reports anomalies (it has a predictive scale)
    forecast: np.ndarray | None = None  # (H, D)
    forecast_intervals: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def add(self, reply: PointsReply) -> None:
        self.predictions.append(reply.predictions)
        for level, (lo, hi) in reply.intervals.items():
            los, his = self.intervals.setdefault(level, ([], []))
            los.append(lo)
            his.append(hi)
        if reply.anomalies is not None:
            self.flagged = True
            for a in reply.anomalies:
                self.anomalies[(a.seq, a.dim)] = a.scales
        if reply.forecast is not None:
            self.forecast = reply.forecast
            self.forecast_intervals = dict(reply.forecast_intervals)

    def prediction_array(self) -> np.ndarray:
        return np.concatenate(self.predictions) if self.predictions else np.empty((0, self.values.shape[1]))

    def interval_arrays(self) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        return {lvl: (np.concatenate(lo), np.concatenate(hi)) for lvl, (lo, hi) in self.intervals.items()}


def _num(x: float) -> str:
    return repr(float(x))


def _level_name(level: float) -> str:
    return f"{level:g}"


class RowWriter:
    """The output CSV: a row per point as each chunk's reply arrives, then the forecast rows."""

    def __init__(self, out: IO[str], names: list[str], levels: Sequence[float], horizon: int) -> None:
        self.w = csv.writer(out, lineterminator="\n")
        self.out = out
        self.levels = list(levels)
        self.horizon = horizon
        self.dims = len(names)

        def cols(base: str) -> list[str]:
            return [base] if len(names) == 1 else [f"{base}_{n}" for n in names]

        header = ["step", *cols("value"), *cols("prediction")]
        for lvl in self.levels:
            header += cols(f"lower_{_level_name(lvl)}") + cols(f"upper_{_level_name(lvl)}")
        header += cols("anomaly")
        if horizon:
            header += cols("forecast")
            for name in map(_level_name, self.levels):
                header += cols(f"forecast_lower_{name}") + cols(f"forecast_upper_{name}")
        self.width = len(header)
        self.w.writerow(header)

    def points(self, first_step: int, values: np.ndarray, reply: PointsReply) -> None:
        flags = {(a.seq, a.dim): a.scales for a in reply.anomalies or ()}
        for i in range(len(values)):
            step = first_step + i
            row = [str(step), *map(_num, values[i]), *map(_num, reply.predictions[i])]
            for lvl in self.levels:
                lo, hi = reply.intervals.get(lvl, (None, None))
                row += [_num(v) for v in lo[i]] if lo is not None else [""] * self.dims
                row += [_num(v) for v in hi[i]] if hi is not None else [""] * self.dims
            row += [_num(flags[(step, d)]) if (step, d) in flags else "" for d in range(self.dims)]
            self.w.writerow(row + [""] * (self.width - len(row)))
        self.out.flush()

    def forecast(self, first_step: int, res: Streamed) -> None:
        if res.forecast is None:
            return
        lead = 1 + 2 * self.dims + 2 * len(self.levels) * self.dims + self.dims  # step .. anomaly
        for h in range(len(res.forecast)):
            row = [str(first_step + h)] + [""] * (lead - 1) + [_num(v) for v in res.forecast[h]]
            for lvl in self.levels:
                lo, hi = res.forecast_intervals.get(lvl, (None, None))
                row += [_num(v) for v in lo[h]] if lo is not None else [""] * self.dims
                row += [_num(v) for v in hi[h]] if hi is not None else [""] * self.dims
            self.w.writerow(row)
        self.out.flush()


def _chunks(values: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray]]:
    for a in range(0, len(values), size):
        yield a, values[a : a + size]


def read_series(file: str, columns: list[str] | None, fill: str) -> CsvSeries:
    if file == "-":
        text, name = sys.stdin.read(), "<stdin>"
    else:
        path = Path(file)
        try:
            text, name = path.read_text(encoding="utf-8-sig"), str(path)
        except OSError as e:
            raise UsageError(f"cannot read {file}: {e.strerror or e}") from e
    try:
        return parse_csv(text, name, columns, fill)
    except ValueError as e:
        raise UsageError(str(e)) from e


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'memserve[plot]'), or leave out --plot"
        ) from e


def plot(path: str, names: list[str], res: Streamed, title: str) -> None:
    """The series, its one-step predictions (drawn at the step they predict) with their bands, the
    forecast with its bands, and the flagged points as red dots; one panel per dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = len(names)
    fig, axes = plt.subplots(dims, 1, figsize=(11, 3.6 * dims), squeeze=False, sharex=True)
    steps = res.start + np.arange(len(res.values))
    preds = res.prediction_array()
    bands = res.interval_arrays()
    shades = sorted(bands, reverse=True)  # widest first, lightest
    for d, ax in enumerate(axes[:, 0]):
        ax.plot(steps, res.values[:, d], color="black", lw=1.0, label="series")
        for k, lvl in enumerate(shades):
            lo, hi = bands[lvl]
            alpha = 0.15 + 0.15 * k
            ax.fill_between(steps + 1, lo[:, d], hi[:, d], color="tab:blue", alpha=alpha, lw=0,
                            label=f"{_level_name(lvl)}% interval")  # fmt: skip
        ax.plot(steps + 1, preds[:, d], color="tab:blue", lw=1.0, label="one-step prediction")
        if res.forecast is not None:
            f_steps = res.start + len(res.values) + np.arange(len(res.forecast))
            for k, lvl in enumerate(sorted(res.forecast_intervals, reverse=True)):
                lo, hi = res.forecast_intervals[lvl]
                ax.fill_between(f_steps, lo[:, d], hi[:, d], color="tab:orange", alpha=0.15 + 0.15 * k, lw=0,
                                label=f"forecast {_level_name(lvl)}%")  # fmt: skip
            ax.plot(f_steps, res.forecast[:, d], color="tab:orange", lw=1.5, ls="--", label="forecast")
        hits = sorted(s for (s, dim) in res.anomalies if dim == d)
        if hits:
            idx = np.asarray(hits) - res.start
            ax.scatter(hits, res.values[idx, d], color="red", s=24, zorder=5, label="anomaly")
        ax.set_ylabel(names[d])
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, ncol=3)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if args.plot:
        _need_matplotlib()  # before anything is sent
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    series = read_series(args.file, columns, args.fill)
    values = series.values
    names = series.columns
    levels: list[float] = args.level or []
    key = args.key or os.environ.get("MEMSERVE_API_KEY") or None
    say = (lambda msg: None) if args.quiet else (lambda msg: print(f"{PROG}: {msg}", file=sys.stderr))
    if series.dropped:
        say(f"ignored column(s) {', '.join(map(repr, series.dropped))}; values from {', '.join(names)}")
    if series.filled:
        say(f"filled {series.filled} missing value(s) ({args.fill})")

    with Client(args.url, api_key=key) as ms:
        if args.session:
            info = ms.get_session(args.session)
            if args.model and args.model != info.model:
                raise UsageError(f"session {info.id} is of model {info.model}, not {args.model}")
        else:
            info = ms.create_session("memnet", model=args.model)
            say(f"created session {info.id} ({info.model} {info.model_version}); "
                f"continue it with --session {info.id}")  # fmt: skip
        if info.kind != "memnet":
            raise UsageError(f"session {info.id} is a {info.kind} session; streaming needs a memnet session")
        if info.input_dim != values.shape[1]:
            raise UsageError(
                f"{info.model} takes {info.input_dim} value(s) per point, and the file has "
                f"{values.shape[1]} value column(s) ({', '.join(names)}): pick columns with --columns"
            )
        res = Streamed(start=info.step, values=values)
        stream = ms.stream(info.id, seq=info.step)
        out: IO[str] = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
        try:
            writer = RowWriter(out, names, levels, args.horizon)
            with tqdm(
                total=len(values), unit="pt", file=sys.stderr, disable=True if args.quiet else None
            ) as bar:
                for a, chunk in _chunks(values, args.chunk):
                    last = a + len(chunk) == len(values)
                    reply = stream.send(chunk, horizon=args.horizon if last else 0, level=levels or None)
                    res.add(reply)
                    writer.points(reply.seq, chunk, reply)
                    bar.update(len(chunk))
            writer.forecast(res.start + len(values), res)
        finally:
            if out is not sys.stdout:
                out.close()
    if args.plot:
        plot(args.plot, names, res, f"{info.model} {info.model_version}, session {info.id}")
    flagged = f", {len(res.anomalies)} anomalous" if res.flagged else ""
    ahead = f", a {args.horizon}-step forecast" if args.horizon else ""
    say(f"session {info.id}: {len(values)} points at steps {res.start} to {res.start + len(values) - 1}"
        f"{flagged}{ahead}" + (f"; rows in {args.out}" if args.out else "")
        + (f"; plot in {args.plot}" if args.plot else ""))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `memserve stream`."""
    args = parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except ProblemError as e:
        print(f"{PROG}: the service refused: {e}", file=sys.stderr)
        return 1
    except httpx.TransportError as e:
        print(f"{PROG}: cannot reach {args.url}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
