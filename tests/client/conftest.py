"""Helpers of the client tests: a client on the emulator, unpaced, and the texts' reference
vectors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from empirio import EmbeddingClient

KEY = "sk-test-0123456789abcdefSECRET"
TEXTS = [f"document {i} about topic {i % 7}: " + "words " * (i % 13) for i in range(137)]


def client(url: str, **kw: Any) -> EmbeddingClient:
    kw.setdefault("rpm", None)
    kw.setdefault("tpm", None)
    kw.setdefault("api_key", KEY)
    return EmbeddingClient(base_url=url, **kw)


@pytest.fixture
def reference(emulator_url: str) -> np.ndarray:
    """The fault-free vectors of TEXTS."""
    with client(emulator_url) as c:
        dense = c.embed(TEXTS).dense
    assert dense is not None
    return dense
