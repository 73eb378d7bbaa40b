"""Runs MemNet point jobs: one batched step per time index across many sessions.

Per batch: load every job's session (one pipelined round trip), decide what each job is
(a new chunk, a retry of the last chunk, a refusal), run the new chunks of each model as
one batch, then commit each session's new state with a compare-and-set script and reply.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import torch
from torch import Tensor

from app.catalog import ModelKey
from app.errors import CorruptState, InvalidInput, InvalidRequest, MemserveError, SeqConflict, SessionNotFound
from app.kinds.memnet import dist
from app.kinds.memnet.engine import MemNetEngine
from app.kinds.memnet.state import SessionState, StateCache, commit_args
from app.kinds.memnet.wire import PointsJob
from app.queue.messages import error_reply, ok_reply
from app.queue.reader import Delivery
from app.store.codec import CodecError, decode_fields
from app.store.keys import Keys
from app.store.point_states import Commit, PointStates
from app.worker.budget import UNBOUNDED, WorkBudget
from app.worker.runner import Outcome, Runner
from models.memnet import MemNetState

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A job together with its session as read from Redis."""

    delivery: Delivery
    job: PointsJob
    meta: dict[bytes, bytes]
    head: list[bytes | None]  # point_states.HEAD_FIELDS
    stored_reply: bytes | None
    state: SessionState | None = None  # filled for jobs that run

    @property
    def step(self) -> int:
        return int(self.head[0] or 0)

    @property
    def etag(self) -> bytes | None:
        return self.head[3]

    @property
    def has_state(self) -> bool:
        return self.head[0] is not None


class ServedMemNet:
    """One loaded MemNet checkpoint with its normalisation, run by either backend."""

    def __init__(self, engine: MemNetEngine, card: dict[str, Any], device: torch.device) -> None:
        self.engine = engine
        self.card = card
        self.device = device  # where the batch's state tensors live
        norm = card.get("normalization") or {}
        dim = int(card.get("input_dim") or engine.config.input_dim)
        self.mean = np.asarray(norm.get("mean", [0.0] * dim), dtype=np.float32)
        self.std = np.asarray(norm.get("std", [1.0] * dim), dtype=np.float32)
        self.has_scale = bool(engine.config.predict_scale)  # intervals and anomaly flags
        init = engine.initial_state(1, device=torch.device("cpu"))
        self._init = {name: getattr(init, name)[0].numpy() for name in ("h", "keys", "values", "stats")}

    def initial(self) -> SessionState:
        """The state of a session that has seen no point yet."""
        i = self._init
        return SessionState(h=i["h"], keys=i["keys"], values=i["values"], count=0, pos=0, stats=i["stats"])

    def stack(self, states: list[SessionState]) -> MemNetState:
        """Stack B sessions' states into one batch on the model's device."""
        dev = self.device
        return MemNetState(
            h=torch.from_numpy(np.stack([s.h for s in states])).to(dev),  # (B, H)
            keys=torch.from_numpy(np.stack([s.keys for s in states])).to(dev),  # (B, N, Dk)
            values=torch.from_numpy(np.stack([s.values for s in states])).to(dev),  # (B, N, Dv)
            count=torch.tensor([s.count for s in states], dtype=torch.int64, device=dev),
            pos=torch.tensor([s.pos for s in states], dtype=torch.int64, device=dev),
            stats=torch.from_numpy(np.stack([self._stats_of(s) for s in states])).to(dev),  # (B, 6, D)
        )

    def _stats_of(self, s: SessionState) -> np.ndarray:
        return self._init["stats"] if s.stats is None else s.stats

    def to_client(self, z: np.ndarray) -> np.ndarray:
        """Model units (the card's normalisation) to the client's."""
        return z * self.std + self.mean


def _select(state: MemNetState, idx: torch.Tensor) -> MemNetState:
    return MemNetState(*(getattr(state, f)[idx] for f in MemNetState._fields))


@dataclass
class ChunkRows:
    """What one batch of chunks gave, per row: in client units unless said otherwise."""

    preds: np.ndarray  # (B, T_max, D) prediction of each next value
    stds: np.ndarray  # (B, T_max, D) its std (0 for a model without a predictive scale)
    forecasts: list[np.ndarray | None]  # (horizon, D), None where no forecast was asked
    forecast_intervals: list[dict[str, Any] | None]  # {level: {lower, upper}} per row
    y_last: np.ndarray  # (B, D) the last prediction, model units
    std_last: np.ndarray  # (B, D) its std, model units


@torch.inference_mode()
def run_chunks(
    served: ServedMemNet,
    state: MemNetState,
    chunks: list[np.ndarray],
    horizons: list[int],
    levels: list[tuple[float, ...]] | None = None,
    seeds: list[tuple[str, int]] | None = None,
    budget: WorkBudget = UNBOUNDED,
) -> tuple[MemNetState, ChunkRows]:
    """Step B sessions through their chunks (lengths may differ) and forecast where asked.

    Rows with a horizon and levels also get forecast intervals from sampled paths, their noise
    seeded by ``seeds[i]`` = (session id, step after the chunk).
    """
    engine, dev = served.engine, served.device
    b, dim = len(chunks), int(chunks[0].shape[1])
    lengths = np.array([c.shape[0] for c in chunks])
    t_max = int(lengths.max())
    x = np.zeros((b, t_max, dim), dtype=np.float32)  # (B, T_max, D), padded
    for i, c in enumerate(chunks):
        x[i, : c.shape[0]] = (c - served.mean) / served.std
    len_t = torch.from_numpy(lengths).to(dev)
    preds, stds = engine.run_steps(torch.from_numpy(x).to(dev), len_t, state)  # 2 x (B, T_max, D)
    rows = torch.arange(b, device=dev)
    y_last, std_last = preds[rows, len_t - 1], stds[rows, len_t - 1]  # (B, D)
    forecasts, intervals = forecast_rows(served, state, y_last, std_last, horizons, levels, seeds, budget)
    out = ChunkRows(
        preds=served.to_client(preds.cpu().numpy()), stds=stds.cpu().numpy() * served.std,
        forecasts=forecasts, forecast_intervals=intervals,
        y_last=y_last.cpu().numpy(), std_last=std_last.cpu().numpy(),
    )  # fmt: skip
    return state, out


@torch.inference_mode()
def forecast_rows(
    served: ServedMemNet,
    state: MemNetState,
    y_last: Tensor,
    std_last: Tensor,
    horizons: list[int],
    levels: list[tuple[float, ...]] | None,
    seeds: list[tuple[str, int]] | None,
    budget: WorkBudget = UNBOUNDED,
) -> tuple[list[np.ndarray | None], list[dict[str, Any] | None]]:
    """Per row of ``state``: the forecast (client units; None where horizon is 0) and, where
    levels are asked of a model with a predictive scale, its bands from sampled paths, their
    noise seeded by ``seeds[i]`` = (session id, step after the row's last point); the rows'
    paths run in as few passes as ``budget`` allows."""
    engine, dev = served.engine, served.device
    b, dim = y_last.shape
    forecasts: list[np.ndarray | None] = [None] * b
    intervals: list[dict[str, Any] | None] = [None] * b
    want = [i for i, h in enumerate(horizons) if h > 0]
    if want:
        idx = torch.tensor(want, device=dev)
        fc = engine.forecast(y_last[idx], _select(state, idx), max(horizons[i] for i in want))
        fc_np = served.to_client(fc.cpu().numpy())  # (B', H_max, D)
        for j, i in enumerate(want):
            forecasts[i] = fc_np[j, : horizons[i]]
    sampled = [i for i in want if levels and levels[i]] if served.has_scale else []
    if sampled:
        assert seeds is not None and levels is not None, "forecast intervals need the rows' seeds"
        h_max = max(horizons[i] for i in sampled)
        # Per row: S copies of its state (old, new and the step's temporaries) and of its paths.
        parts = (state.h, state.keys, state.values, state.stats)
        state_row = sum(t[0].numel() * t.element_size() for t in parts)
        row_bytes = dist.FORECAST_PATHS * 3 * (state_row + h_max * dim * 4)
        for span in budget.spans([row_bytes] * len(sampled)):
            rows = sampled[span]
            noise = torch.zeros((len(rows), dist.FORECAST_PATHS, h_max, dim))  # (B', S, H_max, D)
            for j, i in enumerate(rows):  # each row's own draws: the batch does not change them
                noise[j, :, : horizons[i]] = dist.path_noise(*seeds[i], dist.FORECAST_PATHS, horizons[i], dim)
            idx = torch.tensor(rows, device=dev)
            paths = engine.sample_paths(y_last[idx], std_last[idx], _select(state, idx), noise).cpu().numpy()
            for j, i in enumerate(rows):
                row_paths = served.to_client(paths[j, :, : horizons[i]])  # (S, horizon, D)
                intervals[i] = dist.path_intervals(row_paths, list(levels[i]))
    return forecasts, intervals


def points_body(
    seq: int, preds: np.ndarray, stds: np.ndarray, anomalies: list[dict[str, Any]] | None,
    forecast: np.ndarray | None, forecast_intervals: dict[str, Any] | None, levels: tuple[float, ...],
    repeat: bool,
) -> dict[str, Any]:  # fmt: skip
    """The reply to one chunk of T points (preds (T, D)): the one shape `PointsResponse` documents;
    ``anomalies`` None for a model without a predictive scale."""
    body: dict[str, Any] = {
        "seq": seq, "step": seq + preds.shape[0], "predictions": preds, "forecast": forecast,
        "intervals": dist.gaussian_intervals(preds, stds, list(levels)) if levels else None,
        "forecast_intervals": forecast_intervals if levels and forecast is not None else None,
        "anomalies": anomalies, "repeat": repeat,
    }  # fmt: skip
    return body


OVERFLOW = (
    "the chunk's values overflow the model's float32 arithmetic: its predictions or state would not "
    "be finite; nothing was stored: send values of smaller magnitude (scale the series down)"
)


def _deviations(
    served: ServedMemNet, chunks: list[np.ndarray], old: list[SessionState | None], res: ChunkRows
) -> np.ndarray:
    """Every point's deviation from its own prediction (B, T_max, D), NaN past a row's chunk and
    where no prediction was made (`dist.deviations`); a chunk's first point was predicted by its
    session's state before the chunk."""
    t_max, dim = max(c.shape[0] for c in chunks), chunks[0].shape[1]
    x = np.full((len(chunks), t_max, dim), np.nan, np.float32)  # (B, T_max, D)
    prev_mean = np.full((len(chunks), dim), np.nan, np.float32)  # (B, D)
    prev_std = np.full_like(prev_mean, np.nan)
    for i, (c, st) in enumerate(zip(chunks, old, strict=True)):
        x[i, : c.shape[0]] = c
        if st is not None and st.y is not None and st.y_std is not None:
            prev_mean[i], prev_std[i] = served.to_client(st.y), st.y_std * served.std
    return dist.batch_deviations(x, res.preds, res.stds, prev_mean, prev_std)


def _finite_rows(res: ChunkRows, lengths: list[int], *state: np.ndarray) -> list[bool]:
    """Per row: its chunk's predictions, its forecast and its new state (arrays (B, ...)) all finite."""
    b, t_max = res.preds.shape[:2]
    pad = (np.arange(t_max)[None, :] >= np.asarray(lengths)[:, None])[..., None]  # (B, T_max, 1)
    ok = np.ones(b, dtype=bool)
    for a in (res.preds, res.stds):
        ok &= (np.isfinite(a) | pad).reshape(b, -1).all(1)  # (B, T_max, D) -> (B,)
    for a in state:
        ok &= np.isfinite(a).reshape(b, -1).all(1)  # (B, ...) -> (B,)
    forecasts = zip(ok.tolist(), res.forecasts, strict=True)
    return [o and (f is None or bool(np.isfinite(f).all())) for o, f in forecasts]


class MemNetRunner(Runner[ServedMemNet]):
    """Processes batches of `points` jobs for every loaded MemNet checkpoint."""

    kind = "memnet"

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        models: dict[ModelKey, ServedMemNet],
        reply_ttl_s: int,
        max_deliveries: int,
        cache_bytes: int = 256 << 20,
        latest: dict[str, ModelKey] | None = None,
        budget: WorkBudget = UNBOUNDED,
    ) -> None:
        super().__init__(r, keys, models, reply_ttl_s, max_deliveries, latest)
        self.cache = StateCache(cache_bytes)
        self.budget = budget
        self.states = PointStates(r, keys, reply_ttl_s)

    def beat(self) -> dict[str, Any]:
        """The cache's hits and misses, for the heartbeat."""
        return {"cache_hits": self.cache.hits, "cache_misses": self.cache.misses}

    def process(self, deliveries: list[Delivery]) -> Outcome:
        """Run one batch; returns what to acknowledge, what to retry and the replies to send."""
        out = Outcome()
        jobs, seen = [], set()
        for d in deliveries:
            try:
                job = PointsJob.from_fields(d.fields)
            except (KeyError, ValueError) as e:
                log.error("dropping malformed job %s: %s", d.entry_id, e)
                out.ack.append(d.entry_id)
                continue
            if job.sid in seen:  # one chunk per session per batch keeps a session's order
                out.retry.append(d)
                continue
            seen.add(job.sid)
            jobs.append((d, job))
        runnable = [ld for ld in self._load(jobs) if self._triage(ld, out)]
        runnable = self._fill_states(runnable, out)
        by_model: dict[ModelKey, list[Loaded]] = {}
        for ld in runnable:
            key = self.key_of(ld.job.model, ld.job.model_version)
            assert key is not None  # `_triage` refused the jobs of models not loaded here
            by_model.setdefault(key, []).append(ld)
        for key, group in by_model.items():
            self._run_group(self.models[key], group, out)
        return out

    def _load(self, jobs: list[tuple[Delivery, PointsJob]]) -> list[Loaded]:
        heads = self.states.heads([(job.sid, job.job_id) for _d, job in jobs])
        pairs = zip(jobs, heads, strict=True)
        return [Loaded(d, job, h.meta, h.head, h.stored_reply) for (d, job), h in pairs]

    def _fill_states(self, group: list[Loaded], out: Outcome) -> list[Loaded]:
        """Each job's session state: from the cache when its etag is current, else Redis."""
        misses = []
        for ld in group:
            if not ld.has_state:
                ld.state = self.served(ld.job.model, ld.job.model_version).initial()
            else:
                ld.state = None if ld.etag is None else self.cache.get(ld.job.sid, ld.etag)
                if ld.state is None:
                    misses.append(ld)
        if not misses:
            return group
        stored = self.states.states([ld.job.sid for ld in misses])
        unreadable: set[int] = set()
        for ld, fields in zip(misses, stored, strict=True):
            try:
                ld.state = SessionState.from_redis(fields)
            except (CodecError, KeyError, ValueError) as e:
                log.error("unreadable state of session %s: %s", ld.job.sid, e)
                self._refuse(ld, out, CorruptState("the session's stored state is unreadable"))
                unreadable.add(id(ld))
        return [ld for ld in group if id(ld) not in unreadable]

    def _refuse(self, ld: Loaded, out: Outcome, error: MemserveError) -> bool:
        out.replies.append((ld.job.reply_to, error_reply(ld.job.job_id, error)))
        out.ack.append(ld.delivery.entry_id)
        return False

    def _triage(self, ld: Loaded, out: Outcome) -> bool:
        """True when the job is a new chunk to run; otherwise its reply is queued in `out`."""
        job = ld.job
        if ld.stored_reply is not None:  # applied before (a re-delivery): answer the same again
            out.replies.append((job.reply_to, ld.stored_reply))
            out.ack.append(ld.delivery.entry_id)
            return False
        if not ld.meta:
            return self._refuse(ld, out, SessionNotFound(f"session {job.sid} does not exist"))
        if (why := self.cannot_run(ld.delivery, job.model, job.model_version)) is not None:
            return self._refuse(ld, out, why)
        if job.levels and not self.served(job.model, job.model_version).has_scale:
            return self._refuse(ld, out, InvalidRequest(
                f"model {job.model} predicts values, not distributions: it has no intervals; "
                "drop `level`, or use a model with a predictive scale (memnet-universal)",
            ))  # fmt: skip
        if job.seq is not None and job.seq != ld.step:
            _step, last_seq, last_digest, _etag = ld.head
            if last_seq == b"%d" % job.seq and last_digest == job.digest.encode():
                self._answer_repeat(ld, out)
                return False
            return self._refuse(ld, out, SeqConflict(
                f"chunk starts at seq {job.seq} but the session is at step {ld.step}", expected_seq=ld.step,
            ))  # fmt: skip
        return True

    def _answer_repeat(self, ld: Loaded, out: Outcome) -> None:
        """A client retry of the last applied chunk: the same reply again, state unchanged."""
        job = ld.job
        served = self.served(job.model, job.model_version)
        fields = self.states.states([job.sid])[0]
        arrays = decode_fields(fields)
        preds = arrays["last_pred"]
        stds = arrays.get("last_std", np.zeros_like(preds))
        devs = arrays.get("last_dev", np.full_like(preds, np.nan))
        forecast, intervals = None, None
        if job.horizon > 0:  # the same seed as the first answer: the same paths
            st = SessionState.from_redis(fields)
            assert st.y is not None, "a session with a last chunk has its last prediction"
            # torch.tensor copies: st.y and st.y_std are read-only views of the bytes Redis
            # returned, which torch.from_numpy would share (and warn about).
            y = torch.tensor(st.y[None], device=served.device)  # (D,) -> (1, D)
            y_std = (
                torch.zeros_like(y)
                if st.y_std is None
                else torch.tensor(st.y_std[None], device=served.device)
            )
            fcs, ivs = forecast_rows(
                served,
                served.stack([st]),
                y,
                y_std,
                [job.horizon],
                [job.levels],
                [(job.sid, ld.step)],
                self.budget,
            )
            forecast, intervals = fcs[0], ivs[0]
        flags = dist.anomalies(devs, job.seq or 0) if served.has_scale else None
        body = points_body(job.seq or 0, preds, stds, flags, forecast, intervals, job.levels, True)
        out.replies.append((job.reply_to, ok_reply(job.job_id, body)))
        out.ack.append(ld.delivery.entry_id)

    def _run_group(self, served: ServedMemNet, group: list[Loaded], out: Outcome) -> None:
        chunks = [
            np.frombuffer(ld.job.values, dtype="<f4").reshape(ld.job.length, ld.job.dim)  # (T, D)
            for ld in group
        ]
        old = [ld.state for ld in group]
        batch = served.stack(old)  # type: ignore[arg-type]
        horizons = [ld.job.horizon for ld in group]
        levels = [ld.job.levels for ld in group]
        seeds = [(ld.job.sid, ld.step + ld.job.length) for ld in group]
        batch, res = run_chunks(served, batch, chunks, horizons, levels, seeds, self.budget)
        h, k, v = batch.h.cpu().numpy(), batch.keys.cpu().numpy(), batch.values.cpu().numpy()
        stats = batch.stats.cpu().numpy()
        count, pos = batch.count.cpu().tolist(), batch.pos.cpu().tolist()
        new = [
            SessionState(h[i], k[i], v[i], int(count[i]), int(pos[i]), stats[i], res.y_last[i],
                         res.std_last[i] if served.has_scale else None)
            for i in range(len(group))
        ]  # fmt: skip
        devs = _deviations(served, chunks, old, res) if served.has_scale else None
        flags = None if devs is None else dist.batch_anomalies(devs, [ld.step for ld in group])
        # Per row its commit, or None for a row whose state or predictions are not finite (float32
        # overflows to inf on huge inputs, and such a state would answer null for ever): refused
        # below, nothing of it stored.
        finite = _finite_rows(res, [ld.job.length for ld in group], h, k, v, stats)
        commits = [
            self._commit_of(served, ld, res, i, old[i], new[i], devs, flags) if finite[i] else None
            for i, ld in enumerate(group)
        ]
        results = iter(self.states.commit([c for c in commits if c is not None]))
        for ld, c, state in zip(group, commits, new, strict=True):
            if c is None:
                self._refuse(ld, out, InvalidInput(OVERFLOW))
                continue
            self._settle(ld, next(results), c.reply, state, c.etag, out)

    def _commit_of(
        self, served: ServedMemNet, ld: Loaded, res: ChunkRows, i: int, old: SessionState | None,
        new: SessionState, devs: np.ndarray | None, flags: list[list[dict[str, Any]]] | None,
    ) -> Commit:  # fmt: skip
        """Row ``i`` of a run batch as a commit: its reply, new etag, scalars and state buffers."""
        job, t = ld.job, ld.job.length
        preds, stds = res.preds[i, :t], res.stds[i, :t]
        body = points_body(
            ld.step, preds, stds, None if flags is None else flags[i], res.forecasts[i],
            res.forecast_intervals[i], job.levels, False,
        )  # fmt: skip
        etag = secrets.token_hex(8).encode()
        scalars = {
            "step": b"%d" % (ld.step + t), "count": b"%d" % new.count, "pos": b"%d" % new.pos,
            "last_seq": b"%d" % ld.step, "last_digest": job.digest.encode(), "etag": etag,
        }  # fmt: skip
        extra = {"last_pred": preds}  # what a retry of this chunk answers with
        if devs is not None:
            extra.update(last_std=stds, last_dev=devs[i, :t])
        pairs, patches = commit_args(old if ld.has_state else None, new, t, extra, scalars)
        ttl = int(ld.meta.get(b"ttl", b"3600"))
        return Commit(job.sid, job.job_id, ld.step, ttl, ok_reply(job.job_id, body), etag, pairs, patches)

    def _settle(
        self, ld: Loaded, res: object, reply: bytes, state: SessionState, etag: bytes, out: Outcome
    ) -> None:
        """Act on the commit script's answer for one job."""
        if isinstance(res, int):  # committed: `res` is the session's new version
            self.cache.put(ld.job.sid, etag, state.copy())
            out.ack.append(ld.delivery.entry_id)
            out.replies.append((ld.job.reply_to, reply))
            out.steps += ld.job.length
            return
        self.cache.drop(ld.job.sid)
        if isinstance(res, Exception):
            raise res
        if res in (b"gone", "gone"):
            self._refuse(ld, out, SessionNotFound(f"session {ld.job.sid} does not exist"))
        else:  # another worker moved the session on meanwhile: decide again next batch
            out.retry.append(ld.delivery)
