"""The request body: each option on the wire only when it applies; the response cap."""

from __future__ import annotations

from empirio._core.wire import request_body, response_cap

KEY = "sk-test-0123456789abcdef"


def test_the_request_body_carries_each_option_only_when_it_applies() -> None:
    common = dict(model="m", dimensions=64, encoding_format="base64", user=None)
    doc = request_body(
        ["é"], kind="document", output="dense", instruction_mode="api", query_instruction="q",
        **common,  # type: ignore[arg-type]
    )  # fmt: skip
    assert doc.decode() == (
        '{"model": "m", "input": ["é"], "dimensions": 64, "encoding_format": "base64"}'
    )
    query = request_body(
        ["x"], kind="query", output="both", instruction_mode="api", query_instruction="q",
        **{**common, "user": "u"},  # type: ignore[arg-type]
    )  # fmt: skip
    for part in ('"text_type": "query"', '"instruct": "q"', '"output_type": "dense&sparse"'):
        assert part in query.decode()
    assert response_cap(10, 64, True) > response_cap(10, 64, False) > response_cap(1, 64, False)
