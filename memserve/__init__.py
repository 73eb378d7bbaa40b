"""A Python client of memserve, the model-serving web service (MemNet streams, VMA few-shot memories).

    import numpy as np
    from memserve import Client, Conflict

    with Client("http://127.0.0.1:8000", api_key="msk_...") as ms:
        sid = ms.create_session("memnet", model="memnet-mackey-glass").id
        stream = ms.stream(sid)                          # keeps the seq of the next chunk
        reply = stream.send(np.sin(np.arange(50) / 5), horizon=10, level=[80, 95])
        lower, upper = reply.intervals[95]               # (T, D) arrays, like reply.predictions
        print(reply.step, reply.forecast[:3], reply.anomalies)
        ms.delete_session(sid)

`AsyncClient` has the same methods, awaitable. Chunks sent through a `Stream` (or `points` with a
seq) are retried with the same seq on dropped connections, timeouts, 429, 503 and 504, and the
server applies each exactly once. Every non-2xx reply raises a `ProblemError` (`NotFound`,
`Conflict`, `RateLimited`, ...) with the problem's status, type, slug, detail and request_id.
"""

from memserve._wire import (
    AddedExemplars,
    AddressScore,
    Anomaly,
    Classification,
    ClassifyReply,
    Conflict,
    Exemplar,
    ExemplarPage,
    GatewayTimeout,
    Health,
    InvalidRequest,
    ModelEntry,
    ModelList,
    NotFound,
    PayloadTooLarge,
    PointsReply,
    ProblemError,
    RateLimited,
    Sample,
    SampleSet,
    SessionInfo,
    SessionPage,
    TenantInfo,
    Unauthorized,
    Unavailable,
)
from memserve.client import AsyncClient, AsyncStream, Client, Stream

__all__ = [
    "AddedExemplars",
    "AddressScore",
    "Anomaly",
    "AsyncClient",
    "AsyncStream",
    "Classification",
    "ClassifyReply",
    "Client",
    "Conflict",
    "Exemplar",
    "ExemplarPage",
    "GatewayTimeout",
    "Health",
    "InvalidRequest",
    "ModelEntry",
    "ModelList",
    "NotFound",
    "PayloadTooLarge",
    "PointsReply",
    "ProblemError",
    "RateLimited",
    "Sample",
    "SampleSet",
    "SessionInfo",
    "SessionPage",
    "Stream",
    "TenantInfo",
    "Unauthorized",
    "Unavailable",
]
