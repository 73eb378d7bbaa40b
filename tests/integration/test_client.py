"""The Python client (`memserve.Client`, `memserve.AsyncClient`) against the real service:
uvicorn API, real worker processes, real Redis."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import memserve
from app.api.auth import key_digest, new_api_key
from app.config import ApiKey, Settings
from memserve import AsyncClient, Client, Conflict, InvalidRequest, NotFound, RateLimited, Unauthorized
from tests.conftest import (
    SCALED_TEST_MODEL,
    TEST_MODEL,
    VMA_TEST_MODEL,
    ApiServer,
    drawings,
    free_port,
    png_b64,
)

PROBLEMS = "https://memserve.dev/problems/"


def series(n: int, seed: int = 0) -> np.ndarray:
    """n points of dimension 2 (TEST_MODEL's)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return (np.hstack([np.sin(t / 5), np.cos(t / 7)]) + 0.1 * rng.standard_normal((n, 2))).astype(np.float32)


def wave(n: int, amp: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(1)
    t = np.arange(n)
    return (50 + amp * np.sin(t / 8) + 0.3 * amp * rng.standard_normal(n)).astype(np.float32)


def client_retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "memserve.client" and "retry" in r.msg]


@pytest.fixture
def ms(api: ApiServer) -> Iterator[Client]:
    with Client(api.url, timeout=30, retries=3, backoff_s=0.05) as c:
        yield c


def test_a_stream_in_chunks_equals_one_request_and_a_repeat_is_answered_again(
    ms: Client, start_worker
) -> None:
    start_worker()
    xs = series(40)
    sid = ms.create_session("memnet", model=TEST_MODEL).id
    stream = ms.stream(sid)  # seq taken from the session's step at the first send
    replies = [stream.send(xs[a:b]) for a, b in ((0, 7), (7, 20))]
    replies.append(stream.send(xs[20:], horizon=6))
    assert [(r.seq, r.step, r.repeat) for r in replies] == [(0, 7, False), (7, 20, False), (20, 40, False)]
    assert stream.seq == 40 and ms.get_session(sid).step == 40
    assert replies[0].predictions.shape == (7, 2) and replies[0].forecast is None
    assert replies[0].intervals == {} and replies[0].anomalies is None  # no predictive scale

    one = ms.create_session("memnet", model=TEST_MODEL)
    assert (one.kind, one.model, one.step, one.input_dim) == ("memnet", TEST_MODEL, 0, 2)
    whole = ms.points(one.id, xs, seq=0, horizon=6)
    chunked = np.concatenate([r.predictions for r in replies])
    np.testing.assert_allclose(chunked, whole.predictions, rtol=1e-5, atol=1e-5)
    assert replies[2].forecast is not None and whole.forecast is not None
    np.testing.assert_allclose(replies[2].forecast, whole.forecast, rtol=1e-5, atol=1e-5)

    again = ms.points(sid, xs[20:], seq=20, horizon=6)  # a lost reply, retried by hand
    assert again.repeat and ms.get_session(sid).step == 40
    np.testing.assert_array_equal(again.predictions, replies[2].predictions)
    tail = ms.points(sid, xs[:3])  # no seq: appended wherever the session is
    assert (tail.seq, tail.step) == (40, 43)


def test_list_sessions(ms: Client) -> None:
    ids = {ms.create_session("memnet", model=TEST_MODEL).id for _ in range(2)}
    try:
        page = ms.list_sessions(offset=0, limit=100)
    except memserve.ProblemError as e:
        if e.status == 405 or (e.status == 404 and e.slug == "not-found"):
            pytest.skip(f"GET /v1/sessions is not served yet: {e}")
        raise
    assert ids <= {s.id for s in page.sessions}
    assert page.offset == 0 and page.limit == 100


def test_intervals_forecast_bands_and_anomalies_are_parsed(ms: Client, start_worker) -> None:
    start_worker()
    sid = ms.create_session("memnet", model=SCALED_TEST_MODEL).id
    xs = wave(80)
    xs[50] += np.float32(40.0)  # a spike of 40 series stds
    stream = ms.stream(sid, seq=0)
    stream.send(xs[:45], level=[80, 95])
    body = stream.send(xs[45:], horizon=12, level=[80, 95])
    assert set(body.intervals) == {80.0, 95.0} and set(body.forecast_intervals) == {80, 95}
    lo95, hi95 = body.intervals[95]
    lo80, hi80 = body.intervals[80]
    assert lo95.shape == hi95.shape == body.predictions.shape == (35, 1)
    assert np.all(lo95 < lo80) and np.all(lo80 < body.predictions) and np.all(body.predictions < hi80)
    assert np.all(hi80 < hi95)
    assert body.forecast is not None and body.forecast.shape == (12, 1)
    f_lo, f_hi = body.forecast_intervals[95]
    assert f_lo.shape == f_hi.shape == (12, 1) and np.all(f_hi - f_lo > 0)
    assert body.anomalies is not None
    spike = {a.seq: a for a in body.anomalies}[50]
    assert isinstance(spike, memserve.Anomaly)
    assert (spike.index, spike.dim) == (5, 0) and spike.scales > 2.576


def test_errors_become_exceptions_with_the_problem_fields(ms: Client, start_worker) -> None:
    start_worker()
    with pytest.raises(NotFound) as nf:
        ms.get_session("0" * 32)
    e = nf.value
    assert (e.status, e.slug, e.type) == (404, "session-not-found", PROBLEMS + "session-not-found")
    assert e.request_id and e.title == "No such session" and e.detail
    assert e.extra.get("instance") == "/v1/sessions/" + "0" * 32
    assert "404 session-not-found" in str(e) and e.request_id in str(e)

    sid = ms.create_session("memnet", model=TEST_MODEL).id
    ms.points(sid, series(3), seq=0)
    with pytest.raises(Conflict) as c:
        ms.points(sid, series(2), seq=10)
    assert c.value.slug == "seq-conflict" and c.value.expected_seq == 3 and c.value.request_id
    stream = ms.stream(sid, seq=1)  # a stream that is behind: raised, seq kept, not skipped
    with pytest.raises(Conflict):
        stream.send(series(2))
    assert stream.seq == 1 and ms.get_session(sid).step == 3
    assert stream.resync() == 3 and stream.send(series(2)).step == 5

    with pytest.raises(InvalidRequest) as bad:  # no predictive scale: no intervals
        ms.points(sid, series(1), seq=5, level=[80])
    assert bad.value.status == 422 and "predictive scale" in bad.value.detail
    with pytest.raises(InvalidRequest) as bad:
        ms.create_session("memnet", ttl_s=0)
    assert bad.value.slug == "invalid-request" and bad.value.extra["errors"]
    with pytest.raises(NotFound) as nf:
        ms.create_session("memnet", model="no-such-model")
    assert nf.value.slug == "model-not-found"
    with pytest.raises(Conflict) as c:
        ms.add_exemplars(sid, [(np.zeros((28, 28)), "a")])
    assert c.value.slug == "wrong-session-kind" and c.value.expected_seq is None
    assert ms.get_session(sid).step == 5


def test_export_import_fork_round_trip(ms: Client, start_worker) -> None:
    start_worker()
    xs = wave(50, amp=10)
    sid = ms.create_session("memnet", model=SCALED_TEST_MODEL, ttl_s=600).id
    ms.stream(sid).send(xs[:30])
    doc = ms.export_session(sid)
    assert isinstance(doc, bytes) and len(doc) > 0
    imported = ms.import_session(doc, ttl_s=300)
    fork = ms.fork_session(sid)
    assert imported.id not in (sid, fork.id) and imported.ttl_s == 300 and fork.ttl_s == 600
    assert imported.step == fork.step == 30 and imported.model == fork.model == SCALED_TEST_MODEL
    a = ms.stream(sid).send(xs[30:], horizon=4, level=[80])
    for other in (imported.id, fork.id):
        b = ms.stream(other).send(xs[30:], horizon=4, level=[80])
        np.testing.assert_array_equal(a.predictions, b.predictions)
        np.testing.assert_array_equal(a.intervals[80][0], b.intervals[80][0])
        assert a.forecast is not None and b.forecast is not None
        np.testing.assert_array_equal(a.forecast, b.forecast)
    ms.delete_session(fork.id)
    with pytest.raises(NotFound):
        ms.get_session(fork.id)
    with pytest.raises(InvalidRequest) as bad:
        ms.import_session(b"not a session document")
    assert bad.value.slug == "invalid-backup"


def test_vma_exemplars_samples_and_classify(ms: Client, start_worker, tmp_path: Path) -> None:
    start_worker()
    sid = ms.create_session("vma", model=VMA_TEST_MODEL, capacity=16).id
    imgs = drawings(4, seed=7)
    png = base64.b64decode(png_b64(imgs[2], scale=3))
    path = tmp_path / "d.png"
    path.write_bytes(base64.b64decode(png_b64(imgs[3])))
    added = ms.add_exemplars(sid, [(imgs[0], "a"), (imgs[1].astype(float), "b"), (png, "c"), (path, 4)])
    assert (added.ids, added.count, added.version) == ([0, 1, 2, 3], 4, 1)

    page = ms.list_exemplars(sid, images=True)
    assert page.total == 4 and [(e.id, e.label) for e in page.exemplars] == [
        (0, "a"),
        (1, "b"),
        (2, "c"),
        (3, "4"),
    ]
    for e, img in zip(page.exemplars, imgs, strict=True):
        assert e.image is not None
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(e.image)).convert("L")) < 128, img.astype(bool)
        )
    second = ms.list_exemplars(sid, offset=1, limit=2)
    assert [e.id for e in second.exemplars] == [1, 2] and second.exemplars[0].image is None

    pngs = ms.samples(sid, n=5, seed=3)
    assert pngs.seed == 3 and all(p.startswith(b"\x89PNG") for p in pngs.pngs())
    assert pngs.arrays().shape == (5, 28, 28) and pngs.arrays().min() >= 0 and pngs.arrays().max() <= 1
    assert ms.samples(sid, n=5, seed=3).pngs() == pngs.pngs()  # seeded
    probs = ms.samples(sid, n=4, exemplar_id=1, format="probs")
    arrays = probs.arrays()
    assert arrays.shape == (4, 28, 28) and arrays.min() >= 0 and arrays.max() <= 1
    assert {s.exemplar_id for s in probs.samples} == {1} and probs.samples[0].image is None
    assert {s.label for s in ms.samples(sid, n=6, label="c").samples} == {"c"}
    anchored = ms.samples(sid, n=4, exemplar_id=1, seed=3, temperature=0.5, anchor=1.0)
    assert (anchored.temperature, anchored.anchor) == (0.5, 1.0)
    assert ms.samples(sid, n=4, exemplar_id=1, seed=3, temperature=0.5).pngs() != anchored.pngs()

    result = ms.classify(sid, imgs[:2], top_k=2, samples=1, seed=1)
    assert result.method == "posterior" and result.samples == 1 and len(result.results) == 2
    for i, res in enumerate(result.results):
        assert res.top[0].exemplar_id == i and res.top[0].label == "ab"[i] and len(res.top) == 2
        assert sum(res.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert res.log_likelihood_nats is not None and isinstance(res.novel, bool)
    single = ms.classify(sid, imgs[3], method="importance", samples=4, seed=2)  # one 28 x 28 array
    assert single.method == "importance" and single.results[0].label == "4"
    by_png = ms.classify(sid, [png], samples=0)
    assert (
        by_png.samples == 0
        and by_png.results[0].log_likelihood_nats is None
        and by_png.results[0].top[0].exemplar_id == 2
    )

    ms.delete_exemplar(sid, 3)
    assert ms.list_exemplars(sid).total == 3 and ms.get_session(sid).exemplars == 3
    with pytest.raises(NotFound) as nf:
        ms.delete_exemplar(sid, 3)
    assert nf.value.slug == "exemplar-not-found"
    with pytest.raises(InvalidRequest) as bad:
        ms.classify(sid, [np.full((27, 28), 0.5)])
    assert bad.value.slug == "invalid-image" and bad.value.extra["at"] == "images[0]"


def test_async_client_streams_and_reports(api: ApiServer, start_worker) -> None:
    async def main() -> None:
        async with AsyncClient(api.url, timeout=30) as ac:
            health = await ac.health()
            assert health.live and not health.ready and "no live worker" in health.reasons
            start_worker()  # blocks the loop a moment; nothing else runs on it
            health = await ac.health()
            assert health.ready and health.redis and health.workers and health.reasons == []
            models = await ac.models()
            assert TEST_MODEL in {m.name for m in models.models} and models.latest[TEST_MODEL] == "1"
            me = await ac.tenant()
            assert me.auth == "off" and me.tenant == ""
            sid = (await ac.create_session("memnet", model=TEST_MODEL)).id
            stream = ac.stream(sid)
            parts = [await stream.send(xs[a : a + 5]) for a in range(0, 15, 5)]
            assert stream.seq == 15 and [p.seq for p in parts] == [0, 5, 10]
            ref = (await ac.create_session("memnet", model=TEST_MODEL)).id
            whole = await ac.points(ref, xs, seq=0)
            chunked = np.concatenate([p.predictions for p in parts])
            np.testing.assert_allclose(chunked, whole.predictions, rtol=1e-5, atol=1e-5)
            with pytest.raises(Conflict) as c:
                await ac.points(sid, xs[:2], seq=0)
            assert c.value.expected_seq == 15
            await ac.delete_session(sid)
            with pytest.raises(NotFound):
                await ac.get_session(sid)

    xs = series(15, seed=3)
    asyncio.run(main())


def test_the_key_is_sent_and_rate_limits_are_waited_out(settings: Settings, caplog) -> None:
    key = new_api_key()
    keyed = settings.model_copy(
        update={
            "auth": "keys", "port": free_port(),
            "api_keys": [
                ApiKey(tenant="slow", sha256=key_digest(key), max_sessions=None, rate_per_s=4, burst=2)
            ],
        }
    )  # fmt: skip
    server = ApiServer(keyed).start()
    caplog.set_level(logging.INFO, logger="memserve.client")
    try:
        with Client(server.url) as anon, pytest.raises(Unauthorized) as no:
            anon.tenant()
        assert no.value.status == 401 and no.value.slug == "unauthorized"
        with Client(server.url, api_key=key, retries=0) as impatient:
            codes = []
            for _ in range(4):
                try:
                    impatient.models()
                    codes.append(200)
                except RateLimited as e:
                    codes.append(e.status)
                    assert e.slug == "rate-limited" and e.retry_after is not None and 0 < e.retry_after <= 1
            assert 429 in codes
        time.sleep(0.6)
        with Client(server.url, api_key=key, retries=10) as patient:
            start = time.monotonic()
            names = [patient.tenant().tenant for _ in range(6)]  # over the rate: waits, never raises
            assert names == ["slow"] * 6 and time.monotonic() - start > 0.5
        assert client_retries(caplog)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("timeout", "seen"),
    [(5.0, "504 timeout"), (0.5, "ReadTimeout")],
    ids=["api-gives-up-504", "client-read-timeout"],
)
def test_a_retry_across_a_worker_kill_applies_each_chunk_exactly_once(
    settings: Settings, start_worker, caplog, timeout: float, seen: str
) -> None:
    # The API gives up on a worker after 1 s (504); the client retries the chunk with the same seq,
    # after that 504 or after its own read timeout, whichever comes first.
    server = ApiServer(settings.model_copy(update={"port": free_port(), "request_timeout_s": 1.0})).start()
    caplog.set_level(logging.INFO, logger="memserve.client")
    xs = series(40, seed=5)
    chunks = [xs[i : i + 10] for i in range(0, 40, 10)]
    try:
        worker = start_worker()
        with (
            Client(server.url) as ms,
            Client(server.url, timeout=timeout, retries=40, backoff_s=0.05) as fast,
        ):
            sid = ms.create_session("memnet", model=TEST_MODEL).id
            stream = fast.stream(sid)
            got = [stream.send(chunks[0]), stream.send(chunks[1])]
            worker.kill()
            out: dict[str, object] = {}

            def send() -> None:
                try:
                    out["reply"] = stream.send(chunks[2])
                except Exception as e:  # reported by the assertion below
                    out["error"] = e

            sender = threading.Thread(target=send)
            sender.start()
            deadline = time.monotonic() + 20
            while not any(seen in m for m in client_retries(caplog)):  # sent with no worker; retried
                assert time.monotonic() < deadline and sender.is_alive(), out
                time.sleep(0.05)
            start_worker()
            sender.join(60)
            assert "error" not in out and isinstance(out.get("reply"), memserve.PointsReply), out
            got.append(out["reply"])  # type: ignore[arg-type]
            got.append(stream.send(chunks[3]))
            assert [r.seq for r in got] == [0, 10, 20, 30] and stream.seq == 40
            assert ms.get_session(sid).step == 40  # every chunk applied once

            ref = ms.create_session("memnet", model=TEST_MODEL).id
            ref_stream = ms.stream(ref)
            want = np.concatenate([ref_stream.send(c).predictions for c in chunks])
            np.testing.assert_allclose(
                np.concatenate([r.predictions for r in got]), want, rtol=1e-5, atol=1e-5
            )
    finally:
        server.stop()


def test_a_refused_connection_is_retried_then_raised(caplog) -> None:
    caplog.set_level(logging.INFO, logger="memserve.client")
    with Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.01) as nowhere:
        with pytest.raises(httpx.ConnectError):
            nowhere.create_session("memnet")  # never sent: safe to send again
        assert len(client_retries(caplog)) == 2
