"""What framework adapters build on: the public surface ``langchain_empirio`` and
``llamaindex_empirio`` import from (and an adapter for another framework would).

Nothing here is needed to use the client; it is the shared machinery of the adapters, kept in
one place so that each adapter stays field declarations and mapping only.
"""

from ._core.config import API_BASE_ENV, API_KEY_ENV, BASE_URL_ENV, SHARE_BUDGET_ENV, is_redis_url
from ._core.observe import PROVIDER, CallRecord
from ._core.plan import InstructionMode, Kind, Output, Overflow, as_text_list, check_texts
from ._core.secret import masked_url
from ._core.settings import DEFAULTS, SETTINGS, Setting, readme_table
from ._io.progress import Progress, tqdm_class
from ._io.telemetry import add_usage_to_framework_span, recording, usage_of
from ._job import (
    abatch_job,
    batch_job,
    call_options,
    claim_job_usage,
    served,
    worth_prefetching,
)
from ._options import CLIENT_OPTIONS, ClientFields, build_client, default_rpm, default_tpm

__all__ = [
    "API_BASE_ENV",
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "CLIENT_OPTIONS",
    "DEFAULTS",
    "PROVIDER",
    "SETTINGS",
    "SHARE_BUDGET_ENV",
    "CallRecord",
    "ClientFields",
    "InstructionMode",
    "Kind",
    "Output",
    "Overflow",
    "Progress",
    "Setting",
    "abatch_job",
    "add_usage_to_framework_span",
    "as_text_list",
    "batch_job",
    "build_client",
    "call_options",
    "check_texts",
    "claim_job_usage",
    "default_rpm",
    "default_tpm",
    "is_redis_url",
    "masked_url",
    "readme_table",
    "recording",
    "served",
    "tqdm_class",
    "usage_of",
    "worth_prefetching",
]
