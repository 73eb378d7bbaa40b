"""`memserve stream` against the real service (uvicorn API, a real worker, real Redis), with the
session-scaled test model, which has intervals and anomaly flags."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.cli import main as memserve
from tests.conftest import REPO, SCALED_TEST_MODEL, TEST_MODEL, ApiServer

HEADER = [
    "step", "value", "prediction", "lower_80", "upper_80", "lower_95", "upper_95", "anomaly",
    "forecast", "forecast_lower_80", "forecast_upper_80", "forecast_lower_95", "forecast_upper_95",
]  # fmt: skip
SPIKE = 90
# Chunked and whole agree to float32 rounding, not bit for bit: a chunk runs its steps in blocks
# of eight or one at a time by its length, and the two forms sum the memory read in other orders.
# Relative to the series' scale (an interval bound near zero has no relative precision of its own).
SAME = 1e-5


def wave(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(n)
    xs = 50 + np.sin(t / 8) + 0.3 * rng.standard_normal(n)
    if n > SPIKE:
        xs[SPIKE] += 40.0  # a spike of 40 series stds
    return np.round(xs, 4)


def dated_csv(xs: np.ndarray) -> str:
    day = date(2024, 1, 1)
    rows = [f"{day + timedelta(days=i)},{x}" for i, x in enumerate(xs)]
    return "date,load\n" + "\n".join(rows) + "\n"


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def floats(rs: list[dict[str, str]], name: str) -> np.ndarray:
    return np.array([float(r[name]) for r in rs])


def test_a_csv_is_streamed_in_chunks_like_one_request(
    api: ApiServer, client: httpx.Client, start_worker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start_worker()
    xs = wave(120)
    scale = float(np.abs(xs).max())
    src = tmp_path / "load.csv"
    src.write_text(dated_csv(xs))
    out, png = tmp_path / "pred.csv", tmp_path / "pred.png"
    code = memserve(["stream", str(src), "--url", api.url, "--model", SCALED_TEST_MODEL, "--horizon", "10",
                     "--level", "80,95", "--out", str(out), "--plot", str(png)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "ignored column(s) 'date'" in err and "continue it with --session" in err

    got = rows(out.read_text())
    assert list(got[0]) == HEADER
    points, fc = got[:120], got[120:]
    assert [int(r["step"]) for r in points] == list(range(120))
    np.testing.assert_array_equal(floats(points, "value"), xs)
    assert all(r["forecast"] == "" for r in points) and all(r["value"] == "" for r in fc)

    # The same series in one request to a new session: the same predictions and intervals.
    sid = client.post("/v1/sessions", json={"kind": "memnet", "model": SCALED_TEST_MODEL}).json()["id"]
    one = {"values": xs.tolist(), "seq": 0, "horizon": 10, "level": [80, 95]}
    whole = client.post(f"/v1/sessions/{sid}/points", json=one).json()
    np.testing.assert_allclose(
        floats(points, "prediction"), np.asarray(whole["predictions"])[:, 0], rtol=SAME, atol=SAME * scale
    )
    for level in ("80", "95"):
        for side in ("lower", "upper"):
            want = np.asarray(whole["intervals"][level][side])[:, 0]
            np.testing.assert_allclose(floats(points, f"{side}_{level}"), want, rtol=SAME, atol=SAME * scale)
    assert np.all(floats(points, "lower_95") < floats(points, "lower_80"))

    # The spike, and only points near it, are flagged, with their scale.
    flagged = {int(r["step"]): float(r["anomaly"]) for r in points if r["anomaly"]}
    assert SPIKE in flagged and flagged[SPIKE] > 2.576
    want_flags = {a["seq"] for a in whole["anomalies"]}
    assert set(flagged) == want_flags

    # Forecast rows after the last point: steps T, T+1, ...; the first is the last prediction.
    assert [int(r["step"]) for r in fc] == list(range(120, 130))
    forecast = floats(fc, "forecast")
    np.testing.assert_allclose(forecast, np.asarray(whole["forecast"])[:, 0], rtol=SAME, atol=SAME * scale)
    assert forecast[0] == pytest.approx(float(points[-1]["prediction"]), rel=1e-9)
    for level in ("80", "95"):
        assert np.all(floats(fc, f"forecast_lower_{level}") < forecast)
        assert np.all(forecast < floats(fc, f"forecast_upper_{level}"))

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.size[0] >= 800 and im.size[1] >= 300

    # --session continues that session where it is: steps go on from 120.
    more = tmp_path / "more.csv"
    more.write_text("\n".join(str(x) for x in wave(140)[120:]) + "\n")
    session = next(line for line in err.splitlines() if "created session" in line).split()[4]
    code = memserve(["stream", str(more), "--url", api.url, "--session", session, "--chunk", "7", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    cont = rows(captured.out)
    assert [int(r["step"]) for r in cont] == list(range(120, 140)) and captured.err == ""
    assert client.get(f"/v1/sessions/{session}").json()["step"] == 140


def test_stdin_through_the_memserve_command(api: ApiServer, start_worker) -> None:
    start_worker()
    xs = wave(30)
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "stream", "-", "--url", api.url, "--model", SCALED_TEST_MODEL,
         "--chunk", "8", "--horizon", "3"],
        input="\n".join(map(str, xs)) + "\n", capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = rows(proc.stdout)
    assert list(got[0]) == ["step", "value", "prediction", "anomaly", "forecast"]
    assert [int(r["step"]) for r in got] == list(range(33))
    np.testing.assert_array_equal(floats(got[:30], "value"), xs)
    assert all(r["prediction"] for r in got[:30]) and all(r["forecast"] for r in got[30:])
    assert "created session" in proc.stderr


def test_a_missing_value_names_its_row_and_exits_2(
    api: ApiServer, client: httpx.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "gap.csv"
    src.write_text("date,load\n2024-01-01,1.0\n2024-01-02,2.0\n2024-01-03,\n2024-01-04,4.0\n")
    code = memserve(["stream", str(src), "--url", api.url, "--model", SCALED_TEST_MODEL])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "row 4" in captured.err and "'load'" in captured.err and "--fill linear" in captured.err
    assert client.get("/v1/sessions").json()["total"] == 0  # nothing was created


def test_bad_inputs_exit_2_before_anything_is_sent(
    api: ApiServer, client: httpx.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    src = tmp_path / "one.csv"
    src.write_text("1.0\n2.0\n3.0\n")
    assert memserve(["stream", str(tmp_path / "absent.csv"), "--url", api.url]) == 2
    assert "cannot read" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert memserve(["stream", str(src), "--url", api.url, "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert client.get("/v1/sessions").json()["total"] == 0
    # TEST_MODEL takes 2 values per point; the file has one column.
    assert memserve(["stream", str(src), "--url", api.url, "--model", TEST_MODEL]) == 2
    assert "takes 2 value(s) per point" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad_level:
        memserve(["stream", str(src), "--level", "80,100"])
    assert bad_level.value.code == 2


def test_an_unreachable_service_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "one.csv"
    src.write_text("1.0\n2.0\n")
    assert memserve(["stream", str(src), "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_the_stream_command_does_not_import_torch() -> None:
    code = "import sys, app.stream_cli, app.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_the_example_series_streams(api: ApiServer, start_worker, capsys: pytest.CaptureFixture[str]) -> None:
    start_worker()
    code = memserve(["stream", str(REPO / "examples" / "series.csv"), "--url", api.url, "--model",
                     SCALED_TEST_MODEL, "--horizon", "24", "--level", "80,95"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "ignored column(s) 'month'" in captured.err
    got = rows(captured.out)
    assert [int(r["step"]) for r in got] == list(range(324))
    assert got[150]["value"] == "170.17" and got[299]["prediction"] and got[300]["forecast"]
    # (Whether the spikes at 150 and 240 are flagged depends on the model: this random one's
    # predicted spread is too wide to tell; a trained model with a predictive scale flags them.)
