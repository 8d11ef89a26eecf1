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
