"""The service on a real Redis Cluster: three masters started here, the real API, a real worker.

`MEMSERVE_REDIS_CLUSTER=true` puts the clients in cluster mode; these tests check that every
path of the service keeps to what a cluster allows (one slot per script, MULTI or multi-stream
XREADGROUP) and that sessions really spread over the masters. Skipped only where the
`redis-server` binary is absent.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.cluster import RedisCluster

from app.config import Settings, SettingsError
from app.healthcheck import check_worker
from app.store.backup import MEDIA_TYPE
from app.store.client import sync_client
from app.store.keys import Keys
from tests.conftest import TEST_MODEL, ApiServer, WorkerProc, drawings, run_offline
from tests.integration.test_stream import post, series
from tests.integration.test_vma import add, classify

SLOTS = 16384
MASTERS = 3


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_ports(n: int) -> list[int]:
    """`n` free ports whose cluster bus ports (port + 10000) are free as well."""
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < n:
        p = rng.randrange(20000, 45000)
        if p not in ports and _bindable(p) and _bindable(p + 10000):
            ports.append(p)
    return ports


def _wait(what: str, ok: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"Redis Cluster: {what} within {timeout:g} s")
        time.sleep(0.1)


def _create_cluster(nodes: list[redis.Redis], ports: list[int]) -> None:
    """Slots split evenly over the masters, then the masters meet (what `redis-cli --cluster
    create` does, without needing redis-cli)."""
    bounds = np.linspace(0, SLOTS, len(nodes) + 1).astype(int)
    for i, node in enumerate(nodes):
        node.execute_command("CLUSTER SET-CONFIG-EPOCH", i + 1)  # distinct epochs: no collision to settle
        node.execute_command("CLUSTER ADDSLOTS", *range(bounds[i], bounds[i + 1]))
    for port in ports[1:]:
        nodes[0].execute_command("CLUSTER MEET", "127.0.0.1", port)

    def formed() -> bool:
        infos = [n.cluster("INFO") for n in nodes]
        return all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == len(nodes) for i in infos)

    _wait("cluster_state:ok on every node", formed)


@pytest.fixture(scope="module")
def cluster_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three redis-server masters in cluster mode, stopped by their pids at teardown."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed: the Redis Cluster tests start their own three masters")
    work = tmp_path_factory.mktemp("cluster")
    ports = _cluster_ports(MASTERS)
    procs: list[subprocess.Popen[bytes]] = []
    nodes: list[redis.Redis] = []
    try:
        for port in ports:
            log = open(work / f"redis-{port}.log", "wb")  # noqa: SIM115 (closed with the process)
            args = [
                server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", str(work / f"nodes-{port}.conf"), "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(work),
            ]  # fmt: skip
            procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        nodes = [redis.Redis(port=p, socket_timeout=5) for p in ports]
        for node, proc in zip(nodes, procs, strict=True):

            def up(node: redis.Redis = node, proc: subprocess.Popen[bytes] = proc) -> bool:
                assert proc.poll() is None, f"redis-server exited: {proc.args}"
                try:
                    return bool(node.ping())
                except redis.ConnectionError:
                    return False

            _wait("a master answers PING", up)
        _create_cluster(nodes, ports)
        yield ports
    finally:
        for node in nodes:
            node.close()
        for proc in procs:
            proc.terminate()  # SIGTERM to this process' pid
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def cluster_settings(settings: Settings, cluster_ports: list[int]) -> Settings:
    return settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{cluster_ports[0]}", "redis_cluster": True}
    )


@pytest.fixture
def rc(cluster_settings: Settings) -> Iterator[RedisCluster]:
    """A cluster client of the test's own (plain redis-py, not the service's)."""
    r = RedisCluster.from_url(cluster_settings.require_redis_url())
    yield r
    r.close()


@pytest.fixture
def worker(cluster_settings: Settings, tmp_path: Path, rc: RedisCluster) -> Iterator[WorkerProc]:
    w = WorkerProc(cluster_settings, tmp_path / "worker.log")
    keys = Keys(cluster_settings.key_prefix)

    def ready() -> bool:
        if w.proc.poll() is not None:
            raise RuntimeError(f"worker exited: {w.log_path.read_text()[-3000:]}")
        return any(f"-{w.pid}-" in m.decode() for m in rc.zrange(keys.worker_registry(), 0, -1))

    try:
        _wait("the worker heartbeats", ready, timeout=90)
        yield w
    finally:
        w.stop()


@pytest.fixture
def client(cluster_settings: Settings, worker: WorkerProc) -> Iterator[httpx.Client]:
    """The real API on the cluster, with one worker serving it."""
    server = ApiServer(cluster_settings).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            yield c
    finally:
        server.stop()


def assert_clean_log(worker: WorkerProc) -> None:
    """No Redis error (CROSSSLOT, NOSCRIPT, ...) and no traceback in the worker's log."""
    text = worker.log_path.read_text()
    for bad in ("Traceback", "redis error", "CROSSSLOT", "NOSCRIPT", "failed"):
        assert bad not in text, text[-3000:]


def master_of(rc: RedisCluster, key: str) -> str:
    node = rc.get_node_from_key(key)
    assert node is not None
    return str(node.name)


def assert_on_one_shard(rc: RedisCluster, keys: list[str]) -> None:
    """The keys hash to one slot (the session's tag), and the master of that slot holds them."""
    slots = {int(rc.cluster_keyslot(k)) for k in keys}
    assert len(slots) == 1, keys
    node = rc.get_node_from_key(keys[0])
    direct = redis.Redis(host=node.host, port=node.port)
    try:
        assert all(direct.exists(k) for k in keys), "a key is missing on its slot's master"
    finally:
        direct.close()


def test_memnet_stream_and_backups_on_a_cluster(
    client: httpx.Client, rc: RedisCluster, cluster_settings: Settings, ckpt_dir: Path, worker: WorkerProc
) -> None:
    keys = Keys(cluster_settings.key_prefix)
    r = client.post("/v1/sessions", json={"kind": "memnet"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    xs = series(60)
    got: list[list[float]] = []
    seq = 0
    for size in (1, 5, 17, 1, 30, 6):  # shorter and longer than the ring of 8, then wrapped
        r = post(client, sid, xs[seq : seq + size], seq, horizon=4 if seq + size == 60 else 0)
        assert r.status_code == 200, r.text
        got += r.json()["predictions"]
        seq += size
    want, want_fc = run_offline(TEST_MODEL, ckpt_dir, xs, horizon=4)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(r.json()["forecast"]), want_fc, rtol=1e-5, atol=1e-5)
    info = client.get(f"/v1/sessions/{sid}").json()
    assert info["step"] == 60 and info["memory_bytes"] > 0 and info["expires_in_s"] > 0
    assert_on_one_shard(rc, [keys.meta(sid), keys.state(sid)])

    # Export, import and fork: each a MULTI on the session's one slot.
    doc = client.get(f"/v1/sessions/{sid}/export")
    assert doc.status_code == 200 and doc.headers["content-type"] == MEDIA_TYPE
    imported = client.post("/v1/sessions/import", content=doc.content, headers={"content-type": MEDIA_TYPE})
    assert imported.status_code == 201, imported.text
    forked = client.post(f"/v1/sessions/{sid}/fork")
    assert forked.status_code == 201, forked.text
    for copy in (imported.json()["id"], forked.json()["id"]):
        assert client.get(f"/v1/sessions/{copy}/export").content == doc.content
        assert_on_one_shard(rc, [keys.meta(copy), keys.state(copy)])
        more = post(client, copy, xs[-5:], 60, horizon=2)
        assert more.status_code == 200 and more.json()["step"] == 65, more.text

    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    assert client.get(f"/v1/sessions/{sid}").status_code == 404
    assert not rc.exists(keys.meta(sid)) and not rc.exists(keys.state(sid))
    assert_clean_log(worker)


def test_vma_exemplars_on_a_cluster(
    client: httpx.Client, rc: RedisCluster, cluster_settings: Settings, worker: WorkerProc
) -> None:
    keys = Keys(cluster_settings.key_prefix)
    r = client.post("/v1/sessions", json={"kind": "vma"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    imgs = drawings(5, seed=7)
    r = add(client, sid, imgs[:3], ["a", "b", "c"])
    assert r.status_code == 201 and r.json() == {"ids": [0, 1, 2], "count": 3, "version": 1}, r.text
    assert add(client, sid, imgs[3:], ["a", "d"]).json() == {"ids": [3, 4], "count": 5, "version": 2}
    page = client.get(f"/v1/sessions/{sid}/exemplars").json()
    assert [(e["id"], e["label"]) for e in page["exemplars"]] == list(enumerate("abcad"))
    res = classify(client, sid, imgs, top_k=2)
    assert res.status_code == 200, res.text
    assert [x["top"][0]["exemplar_id"] for x in res.json()["results"]] == [0, 1, 2, 3, 4]
    samples = client.post(f"/v1/sessions/{sid}/samples", json={"n": 4, "label": "a", "seed": 3})
    assert samples.status_code == 200, samples.text
    assert {s["exemplar_id"] for s in samples.json()["samples"]} <= {0, 3}
    assert_on_one_shard(rc, [keys.meta(sid), keys.exemplars(sid)])

    # Deleting an exemplar moves the version on: the worker reads the memory again.
    assert client.delete(f"/v1/sessions/{sid}/exemplars/1").status_code == 204
    after = classify(client, sid, imgs[1:2], top_k=5).json()["results"][0]
    assert {t["exemplar_id"] for t in after["top"]} == {0, 2, 3, 4} and "b" not in after["scores"]
    assert client.get(f"/v1/sessions/{sid}").json()["exemplars"] == 4
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    assert not rc.exists(keys.meta(sid)) and not rc.exists(keys.exemplars(sid))
    assert_clean_log(worker)


def test_sessions_spread_over_the_masters_and_batches_span_them(
    client: httpx.Client, rc: RedisCluster, cluster_settings: Settings, worker: WorkerProc
) -> None:
    keys = Keys(cluster_settings.key_prefix)
    memnets = [client.post("/v1/sessions", json={"kind": "memnet"}).json()["id"] for _ in range(9)]
    vmas = [client.post("/v1/sessions", json={"kind": "vma"}).json()["id"] for _ in range(6)]
    assert len({master_of(rc, keys.meta(s)) for s in memnets + vmas}) > 1
    # Both job streams on one slot: one XREADGROUP reads them.
    assert rc.cluster_keyslot(keys.stream("memnet")) == rc.cluster_keyslot(keys.stream("vma"))

    # All at once, so that the worker's batches hold sessions of several masters: its loads,
    # commit scripts and memory reads are pipelines across slots.
    xs = series(8)
    imgs = drawings(2, seed=9)
    answers: dict[str, int] = {}

    def stream(sid: str) -> None:
        answers[sid] = post(client, sid, xs, 0).status_code

    def remember(sid: str) -> None:
        answers[sid] = add(client, sid, imgs, ["p", "q"]).status_code

    threads = [threading.Thread(target=stream, args=(s,)) for s in memnets]
    threads += [threading.Thread(target=remember, args=(s,)) for s in vmas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(answers.values()) == {200, 201} and len(answers) == len(threads), answers
    queries: dict[str, list[str]] = {}

    def query(sid: str) -> None:
        queries[sid] = [r["label"] for r in classify(client, sid, imgs).json()["results"]]

    threads = [threading.Thread(target=query, args=(s,)) for s in vmas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert queries == {sid: ["p", "q"] for sid in vmas}
    for sid in memnets:
        assert client.get(f"/v1/sessions/{sid}").json()["step"] == 8

    assert check_worker(cluster_settings) is None  # the container health check, on the cluster
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
    assert [w["pid"] for w in ready.json()["workers"]] == [worker.pid]
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.text)
        for s in family.samples
    }
    assert samples[("memserve_redis_up", ())] == 1
    assert samples[("memserve_workers_live", ())] == 1
    assert samples[("memserve_sessions_live", (("kind", "memnet"),))] == len(memnets)
    assert samples[("memserve_sessions_live", (("kind", "vma"),))] == len(vmas)
    assert samples[("memserve_queue_depth", (("stream", keys.stream("memnet")),))] == 0
    assert_clean_log(worker)


def test_cluster_mode_needs_a_tcp_url(settings: Settings) -> None:
    # `memserve serve` without a URL starts an embedded Redis on a unix socket: no cluster.
    embedded = settings.model_copy(update={"redis_url": "unix:///tmp/redis.sock", "redis_cluster": True})
    with pytest.raises(SettingsError, match="MEMSERVE_REDIS_CLUSTER"):
        sync_client(embedded)
