"""The option types: each defined once, as a ``Literal``, with its runtime tuple derived from it.

Add a value here and every check, error message and CLI choice that lists it follows.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "BUDGET_SCOPES",
    "ENCODING_FORMATS",
    "INSTRUCTION_MODES",
    "KINDS",
    "LIMIT_SOURCES",
    "OUTPUTS",
    "OVERFLOWS",
    "VIEWS",
    "BudgetScope",
    "EncodingFormat",
    "InstructionMode",
    "Kind",
    "LimitSource",
    "Output",
    "Overflow",
    "ShareBudget",
    "View",
    "wants_dense",
    "wants_sparse",
]

#: What a text is: a document (no instruction) or a query (gets the query instruction).
Kind = Literal["document", "query"]
#: What a call returns: dense vectors, sparse vectors, or both from one request.
Output = Literal["dense", "sparse", "both"]
#: What happens to a text over the model's input limit.
Overflow = Literal["truncate", "chunk", "error"]
#: How queries get their instruction: in the text, as API fields, or not at all.
InstructionMode = Literal["prompt", "api", "none"]
#: How vectors travel on the wire.
EncodingFormat = Literal["base64", "float"]
#: One of the two views of a text's embedding.
View = Literal["dense", "sparse"]
#: Who shares a rate-limit budget on one machine.
BudgetScope = Literal["machine", "process", "client"]
#: Where a budget is shared: a scope, or a ``redis://`` / ``rediss://`` URL.
ShareBudget = BudgetScope | str
#: Where a limit in effect came from: an argument or the environment (``"set"``), nobody
#: (``"default"``: 50 RPM and 2,000,000 TPM until a server advertises its own), or the server's
#: ``x-ratelimit-limit-*`` headers (``"server"``).
LimitSource = Literal["set", "default", "server"]

KINDS: tuple[Kind, ...] = get_args(Kind)
OUTPUTS: tuple[Output, ...] = get_args(Output)
OVERFLOWS: tuple[Overflow, ...] = get_args(Overflow)
INSTRUCTION_MODES: tuple[InstructionMode, ...] = get_args(InstructionMode)
ENCODING_FORMATS: tuple[EncodingFormat, ...] = get_args(EncodingFormat)
VIEWS: tuple[View, ...] = get_args(View)
BUDGET_SCOPES: tuple[BudgetScope, ...] = get_args(BudgetScope)
LIMIT_SOURCES: tuple[LimitSource, ...] = get_args(LimitSource)


def wants_dense(output: Output) -> bool:
    """Whether ``output`` returns dense vectors (and so asks the service for them)."""
    return output != "sparse"


def wants_sparse(output: Output) -> bool:
    """Whether ``output`` returns sparse vectors (and so asks the service for them)."""
    return output != "dense"
