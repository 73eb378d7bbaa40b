"""The README's few-shot walk-through, run as written against the real service (uvicorn API, a
real worker, real Redis) with the drawings in examples/: each `curl` command of the walk-through
(README.md's, and examples/README.md's copy) is parsed and sent as the same HTTP request, with
`$(base64 -w0 FILE)` replaced by the file's base64 and `$SID` by the session made in step 1."""

from __future__ import annotations

import base64
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from models.data.csvseries import read_csv
from tests.conftest import REPO, ApiServer

EXAMPLES = REPO / "examples"
DRAWINGS = ["alpha", "alpha-2", "beta", "beta-2", "gamma", "gamma-2", "delta", "delta-2", "query"]
WALKTHROUGHS = {
    "README.md": (REPO / "README.md", "## A few-shot session, step by step"),
    "examples/README.md": (EXAMPLES / "README.md", "## The few-shot walk-through with these drawings"),
}


def bash_block(markdown: Path, heading: str) -> str:
    text = markdown.read_text(encoding="utf-8")
    assert heading in text, f"{markdown.name} has no section {heading!r}"
    after = text.split(heading, 1)[1]
    match = re.search(r"```bash\n(.*?)```", after, re.S)
    assert match, f"no bash block after {heading!r}"
    return match.group(1)


def commands(block: str) -> list[str]:
    """The block's shell commands, one string each: continuation lines joined, quoted newlines kept."""
    out, buf = [], ""
    for line in block.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line + "\n"
        if buf.rstrip().endswith("\\"):
            buf = buf.rstrip()[:-1] + " "
            continue
        if buf.count("'") % 2:  # inside a quoted string
            continue
        out.append(buf.strip())
        buf = ""
    assert not buf, f"unfinished command: {buf!r}"
    return out


def as_request(command: str, sid: str | None, base_url: str) -> dict[str, Any]:
    """A `curl` command line as httpx request arguments."""

    def b64(m: re.Match[str]) -> str:
        return base64.b64encode((EXAMPLES / Path(m.group(1)).name).read_bytes()).decode("ascii")

    command = re.sub(r"\$\(base64 -w0 ([\w./-]+)\)", b64, command)
    if sid is not None:
        command = command.replace("$SID", sid)
    assert "$" not in command, command
    args = shlex.split(command, comments=True)
    assert args[0] == "curl", command
    method, headers, data, url = "GET", {}, None, None
    it = iter(args[1:])
    for arg in it:
        if arg == "-X":
            method = next(it)
        elif arg == "-H":
            name, _, value = next(it).partition(":")
            headers[name.strip()] = value.strip()
        elif arg in ("-d", "--data"):
            data = next(it)
            method = "POST" if method == "GET" else method
        elif arg == "-s":
            continue
        else:
            assert url is None and arg.startswith("localhost:8000/"), arg
            url = base_url + arg.removeprefix("localhost:8000")
    assert url is not None, command
    return {"method": method, "url": url, "headers": headers, "content": data}


@pytest.mark.parametrize("source", WALKTHROUGHS.keys())
def test_the_readme_vma_walkthrough_runs_with_the_example_drawings(
    api: ApiServer, start_worker, source: str
) -> None:
    start_worker()
    cmds = [c for c in commands(bash_block(*WALKTHROUGHS[source])) if c.startswith("curl")]
    assert len(cmds) == 6, cmds  # create, add, samples, classify, list, delete
    sid: str | None = None
    replies: list[httpx.Response] = []
    with httpx.Client(timeout=60) as http:
        for command in cmds:
            reply = http.request(**as_request(command, sid, api.url))
            assert reply.status_code < 300, (command[:80], reply.text)
            replies.append(reply)
            if sid is None:
                sid = reply.json()["id"]
        create, add, samples, classify, listing, delete = replies
        assert create.status_code == 201 and create.json()["kind"] == "vma"
        assert create.json()["capacity"] == 512
        assert add.status_code == 201
        assert add.json()["ids"] == [0, 1] and add.json()["count"] == 2
        drawn = samples.json()
        assert drawn["seed"] == 7 and len(drawn["samples"]) == 8
        assert {s["label"] for s in drawn["samples"]} == {"alpha"}
        for s in drawn["samples"][:2]:
            Image.open(io.BytesIO(base64.b64decode(s["image"]))).verify()
        result = classify.json()["results"][0]
        assert set(result["scores"]) == {"alpha", "beta"} and result["label"] in ("alpha", "beta")
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert len(result["top"]) == 2 and result["log_likelihood_nats"] < 0
        assert [(e["id"], e["label"]) for e in listing.json()["exemplars"]] == [(0, "alpha"), (1, "beta")]
        assert delete.status_code == 204
        left = http.get(f"{api.url}/v1/sessions/{sid}/exemplars").json()
        assert [e["label"] for e in left["exemplars"]] == ["alpha"] and left["total"] == 1


def test_the_example_drawings_look_like_omniglot() -> None:
    for name in DRAWINGS:
        with Image.open(EXAMPLES / f"{name}.png") as im:
            assert im.size == (105, 105), name
            px = np.asarray(im.convert("L"))
        assert set(np.unique(px)) <= {0, 255}, name  # black ink on white
        ink = (px == 0).mean()
        assert 0.03 < ink < 0.3, (name, ink)
        assert (px[0] == 255).all() and (px[-1] == 255).all(), name  # a white border


def test_the_examples_are_what_the_script_makes(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(EXAMPLES / "make_examples.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    for name in [*(f"{d}.png" for d in DRAWINGS), "series.csv"]:
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name


def test_the_example_series_reads_as_300_months_with_two_spikes() -> None:
    series = read_csv(EXAMPLES / "series.csv")
    assert series.values.shape == (300, 1) and series.columns == ["sales"] and series.dropped == ["month"]
    xs = series.values[:, 0]
    local = np.abs(xs - np.convolve(xs, np.ones(5) / 5, mode="same"))[2:-2]
    assert set(np.argsort(local)[-2:] + 2) == {150, 240}
