"""A malformed setting stops `memserve` with status 2 and one line that names it, no traceback."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.cli import main, settings_problem
from app.config import Settings

REPO = Path(__file__).resolve().parents[2]


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m app.cli ARGS` with only the given MEMSERVE_* settings, away from any .env file."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEMSERVE_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), clean.get("PYTHONPATH")]))
    # A URL, so that a setting the CLI wrongly accepted would fail on something else, not start
    # an embedded Redis; nothing listens on port 1.
    clean["MEMSERVE_REDIS_URL"] = "redis://127.0.0.1:1/0"
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=tmp_path, env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("MEMSERVE_API_KEYS", "notjson", "expected a JSON list of {tenant, sha256"),
        ("MEMSERVE_API_KEYS", '[{"tenant": "a"}]', "item 0, sha256: field required"),
        ("MEMSERVE_API_KEYS", '{"tenant": "a"}', "expected a JSON list"),
        ("MEMSERVE_PORT", "abc", "expected an integer; got 'abc'"),
        ("MEMSERVE_MAX_BATCH", "0", "expected an integer >= 1; got '0'"),
        ("MEMSERVE_REQUEST_TIMEOUT_S", "-1", "expected a number > 0"),
        ("MEMSERVE_BACKEND", "tensorflow", "expected one of torch, onnx"),
        ("MEMSERVE_ACCESS_LOG", "maybe", "expected true or false"),
        ("MEMSERVE_KEY_PREFIX", "a:b", "without braces, ':' or spaces"),
    ],
)
def test_malformed_setting_is_one_line(tmp_path: Path, setting: str, value: str, says: str) -> None:
    res = run_cli(tmp_path, "api", **{setting: value})
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"memserve: {setting}: "), lines[0]
    assert says in lines[0]


def test_malformed_settings_together_stay_on_one_line(tmp_path: Path) -> None:
    res = run_cli(tmp_path, "api", MEMSERVE_PORT="abc", MEMSERVE_MAX_BATCH="0")
    assert res.returncode == 2
    [line] = res.stderr.strip().splitlines()
    assert "MEMSERVE_PORT: " in line and "MEMSERVE_MAX_BATCH: " in line


def test_malformed_setting_in_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MEMSERVE_API_KEYS=[oops\n")
    res = run_cli(tmp_path, "api")
    assert res.returncode == 2
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("memserve: MEMSERVE_API_KEYS (in .env): expected a JSON list"), line


def test_malformed_api_keys_file_is_one_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text('[{"tenant": "a"}]')
    res = run_cli(tmp_path, "api", MEMSERVE_API_KEYS_FILE=str(keys))
    assert res.returncode == 2
    [line] = res.stderr.strip().splitlines()
    assert line == f"memserve: MEMSERVE_API_KEYS_FILE {keys}: sha256: field required", line


def test_malformed_option_names_the_option(tmp_path: Path) -> None:
    res = run_cli(tmp_path, "serve", "--workers", "-1")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("memserve: --workers: expected an integer >= 0; got -1"), line


def test_redis_url_is_not_repeated_in_the_error() -> None:
    """A Redis URL may carry a password: the line names the setting, not its value."""
    with pytest.raises(ValidationError) as e:
        Settings(redis_url=["redis://:hunter2@h/0"])  # type: ignore[arg-type]
    line = settings_problem(e.value)
    assert line.startswith("MEMSERVE_REDIS_URL: expected a string"), line
    assert "hunter2" not in line


def test_commands_outside_serving_name_the_extra_they_need(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make serve` installs no exporter and no matplotlib: train, export and evaluate --plot
    say so before they start, not after hours of training."""
    real = importlib.util.find_spec
    absent = ("onnxscript", "matplotlib")
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in absent else real(n, *a))
    for argv, extra in ((["export", "--all"], "export"), (["train", "memnet"], "train"),
                        (["evaluate", "--checkpoint", "x", "--plot"], "plot")):  # fmt: skip
        assert main(argv) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"memserve {argv[0]} needs ") and f"'.[{extra}]'" in line, line
