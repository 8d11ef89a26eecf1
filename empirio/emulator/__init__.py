"""A local server that speaks text-embedding-v4's contract, for offline tests, notebooks and CI.

Start it from Python::

    from empirio.emulator import serve

    with serve(rpm=50, tpm=2_000_000) as base_url:
        ...  # point any OpenAI-compatible client at base_url with any non-empty key

or from the shell: ``empirio serve --port 8000``. Its vectors are deterministic and related
texts are close, but they come from hashed tokens, not from the real model.
"""

from ._app import EmulatorApp, EmulatorConfig, EmulatorStats, create_app, text_key
from ._auto import start_if_no_key
from ._embed import FULL_DIMENSIONS, HashEmbedder, SparseWeights
from ._limits import AccountLimiter, Verdict
from ._server import serve

__all__ = [
    "FULL_DIMENSIONS",
    "AccountLimiter",
    "EmulatorApp",
    "EmulatorConfig",
    "EmulatorStats",
    "HashEmbedder",
    "SparseWeights",
    "Verdict",
    "create_app",
    "serve",
    "start_if_no_key",
    "text_key",
]
