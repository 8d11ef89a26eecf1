"""text-embedding-v4 through EmpirioLabs: the shared core of the LangChain and LlamaIndex
integrations.

    from empirio import EmbeddingClient

    client = EmbeddingClient(dimensions=512)          # key from EMPIRIOLABS_API_KEY
    result = client.embed(["first text", "second text"])
    result.dense.shape                                 # (2, 512), float32, unit rows
    client.usage.cost_usd
"""

from ._core.cache_keys import CacheStats, EmbeddingStore
from ._core.config import (
    ALLOWED_DIMENSIONS,
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    DEFAULT_QUERY_INSTRUCTION,
    PRICE_PER_MILLION_TOKENS_USD,
    format_query,
)
from ._core.config import package_version as _version
from ._core.errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetError,
    CacheError,
    CacheWarning,
    ConfigurationError,
    EmpirioError,
    InsufficientCreditsError,
    InternalServerError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    TruncationWarning,
    UnsupportedFeatureError,
)
from ._core.plan import InstructionMode, Kind, Output, Overflow
from ._core.result import EmbeddingResult, Usage
from ._core.tokens import MAX_INPUT_TOKENS, SAFE_INPUT_TOKENS, QwenTokenizer, get_tokenizer
from ._io.cache import EmbeddingCache
from ._io.sqlite_store import SqliteStore
from .client import EmbeddingClient

__version__ = _version()

__all__ = [
    "ALLOWED_DIMENSIONS",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "DEFAULT_QUERY_INSTRUCTION",
    "MAX_INPUT_TOKENS",
    "PRICE_PER_MILLION_TOKENS_USD",
    "SAFE_INPUT_TOKENS",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetError",
    "CacheError",
    "CacheStats",
    "CacheWarning",
    "ConfigurationError",
    "EmbeddingCache",
    "EmbeddingClient",
    "EmbeddingResult",
    "EmbeddingStore",
    "EmpirioError",
    "InstructionMode",
    "InsufficientCreditsError",
    "InternalServerError",
    "InvalidInputError",
    "Kind",
    "NotFoundError",
    "Output",
    "Overflow",
    "PermissionDeniedError",
    "QwenTokenizer",
    "RateLimitError",
    "RequestTooLargeError",
    "SqliteStore",
    "TruncationWarning",
    "UnsupportedFeatureError",
    "Usage",
    "format_query",
    "get_tokenizer",
]
