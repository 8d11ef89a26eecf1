"""Errors: every one pickles whole, and is also what Python code expects."""

from __future__ import annotations

import pickle

import pytest

from empirio import (
    AuthenticationError,
    ConfigurationError,
    EmpirioError,
    InvalidInputError,
    RateLimitError,
)
from empirio._core.errors import agree, plural

KEY = "sk-test-0123456789abcdef"


@pytest.mark.parametrize(
    "error",
    [
        InvalidInputError("bad text", (3,)),
        ConfigurationError("bad setting"),
        AuthenticationError("no", status_code=401, code="invalid_api_key", request_id="r1"),
        RateLimitError("slow", status_code=429, retry_after=2.0, inputs=(1, 2)),
    ],
)
def test_every_error_pickles_with_its_attributes(error: EmpirioError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.__dict__ == error.__dict__


def test_errors_are_also_what_python_code_expects() -> None:
    assert isinstance(InvalidInputError("x"), ValueError)
    assert isinstance(ConfigurationError("x"), ValueError)
    assert (agree(1, "is", "are"), agree(2, "is", "are")) == ("is", "are")
    assert (plural(1, "text"), plural(1_000, "text")) == ("1 text", "1,000 texts")


def _every_error_class() -> list[type[EmpirioError]]:
    import inspect

    from empirio._core import errors

    return [
        cls
        for cls in vars(errors).values()
        if inspect.isclass(cls) and issubclass(cls, EmpirioError)
    ]


@pytest.mark.parametrize("cls", _every_error_class(), ids=lambda c: c.__name__)
def test_every_error_rebuilds_from_its_args_as_job_systems_do(cls: type[EmpirioError]) -> None:
    """Celery's JSON result serializer sends ``type(e).__name__``, its module and ``e.args``,
    and the caller's side rebuilds ``cls(*args)``: the class and the status must survive, or
    ``except empirio.AuthenticationError`` never matches there."""
    import importlib
    import json

    from empirio._core.errors import APIStatusError

    made = cls("the message", 418) if cls is APIStatusError else cls("the message")
    sent = json.dumps(
        {"exc_type": cls.__name__, "exc_module": cls.__module__, "exc_message": list(made.args)}
    )
    got = json.loads(sent)
    rebuilt = getattr(importlib.import_module(got["exc_module"]), got["exc_type"])(
        *got["exc_message"]
    )
    assert type(rebuilt) is cls
    assert str(rebuilt) == str(made)
    assert getattr(rebuilt, "status_code", None) == getattr(made, "status_code", None)
    if isinstance(made, APIStatusError):
        assert made.status_code in (418, type(made).default_status)
    again = type(rebuilt)(*rebuilt.args)  # and plain Python's own way
    assert type(again) is cls
