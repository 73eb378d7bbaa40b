"""The error catalogue: stable problem types, sane statuses, slugs that map back."""

from __future__ import annotations

import pytest

from app import errors
from app.errors import BY_SLUG, PROBLEM_BASE, MemserveError, from_slug


def all_error_classes() -> list[type[MemserveError]]:
    out: list[type[MemserveError]] = []
    todo = [MemserveError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__ == errors.__name__:
                out.append(sub)
            todo.append(sub)
    return out


ERRORS = all_error_classes()


def test_the_catalogue_is_not_empty_and_every_class_is_reachable_by_slug() -> None:
    assert len(ERRORS) >= 15
    assert set(ERRORS) <= set(BY_SLUG.values())


def test_every_error_has_a_unique_slug() -> None:
    slugs = [c.slug for c in ERRORS]
    assert len(slugs) == len(set(slugs)), sorted(slugs)
    assert MemserveError.slug not in slugs  # "internal" stays the fallback only


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_has_a_client_or_server_error_status_and_a_title(cls: type[MemserveError]) -> None:
    assert 400 <= cls.status <= 599
    assert cls.title and cls.title != MemserveError.title
    assert cls.slug and cls.slug == cls.slug.strip().lower() and " " not in cls.slug


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_from_slug_maps_each_slug_back_to_its_class(cls: type[MemserveError]) -> None:
    err = from_slug(cls.slug, "what went wrong", expected_seq=3)
    assert type(err) is cls
    assert err.detail == "what went wrong" and str(err) == "what went wrong"
    assert err.extra == {"expected_seq": 3} and err.headers == {}
    assert err.type_uri() == PROBLEM_BASE + cls.slug


@pytest.mark.parametrize("slug", ["no-such-slug", "", "internal"])
def test_an_unknown_slug_becomes_an_internal_500(slug: str) -> None:
    err = from_slug(slug, "boom")
    assert type(err) is MemserveError
    assert err.status == 500 and err.detail == "boom"
    assert err.type_uri().endswith("/internal")


def test_the_documented_statuses_of_the_design() -> None:
    # DESIGN.md: overloaded queue 429, job not answered in time 504, Redis unreachable 503.
    assert errors.QueueFull.status == 429
    assert errors.ReplyTimeout.status == 504
    assert errors.RedisUnavailable.status == 503
    assert errors.PayloadTooLarge.status == 413
    assert errors.SessionNotFound.status == 404
    assert errors.SeqConflict.status == 409 and errors.WrongSessionKind.status == 409
    assert errors.InvalidInput.status == 422 and errors.InvalidRequest.status == 422
