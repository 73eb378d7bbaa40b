"""The hot routes' lane: which routes it serves, and the shape it insists on."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI, Query, Response

from app.api.app import create_app
from app.api.deps import ServicesDep, TenantDep
from app.api.fastlane import FastLane, hot
from app.config import Settings
from app.kinds.memnet.requests import PointsRequest


def test_the_lane_serves_the_marked_routes_of_every_kind() -> None:
    app = create_app(Settings(redis_url="redis://127.0.0.1:6379/0", auth="off"))
    lane = FastLane(app, app)
    assert sorted(h.route.path for h in lane.hot) == [
        "/v1/sessions/{sid}/classify",
        "/v1/sessions/{sid}/exemplars",
        "/v1/sessions/{sid}/points",
        "/v1/sessions/{sid}/samples",
    ]
    assert all(h.route.methods == {"POST"} for h in lane.hot)


def test_a_hot_route_that_injects_more_is_refused_when_the_app_is_built() -> None:
    router = APIRouter(prefix="/v1/sessions")

    @router.post("/{sid}/points")
    @hot
    async def points(
        sid: str, body: PointsRequest, svc: ServicesDep, tenant: TenantDep, dry: bool = Query(False)
    ) -> Response:
        return Response()

    app = FastAPI()
    app.include_router(router)
    app.state.api_routes = list(router.routes)
    with pytest.raises(AssertionError, match="takes"):
        FastLane(app, app)
