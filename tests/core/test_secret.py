"""Secrets: the key sealed in pickles and redacted from what servers echo."""

from __future__ import annotations

import pickle

from empirio._core.secret import MASK, SealedKey, open_sealed, redact, seal_secrets

KEY = "sk-test-0123456789abcdef"


def test_a_sealed_key_never_shows_and_survives_a_pickle() -> None:
    sealed = SealedKey(KEY)
    data = pickle.dumps(sealed)
    assert KEY.encode() not in data
    assert KEY not in repr(sealed)
    assert pickle.loads(data).reveal() == KEY
    options = seal_secrets({"cache": f"redis://:{KEY}@h:6379/0", "share_budget": "machine"})
    assert KEY.encode() not in pickle.dumps(options)
    assert open_sealed(pickle.loads(pickle.dumps(options)))["cache"].endswith("@h:6379/0")


def test_redact_hides_the_key_as_is_and_percent_encoded() -> None:
    key = "a/b+c=d-secret"
    assert redact(f"bad {key} and a%2Fb%2Bc%3Dd-secret", key) == f"bad {MASK} and {MASK}"
    assert redact("k is short", "k") == "k is short"
