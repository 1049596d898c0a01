"""gatehouse's gRPC transports: one protocol (``base``), two servers (``core``, ``aio``).

The api layer imports ``Abort``, ``Defer``, ``Later`` and ``ServicerContext`` from here
and never learns which transport serves it. ``open_transport`` picks one
(``auto``: core where it is known to work, aio otherwise). The core module,
the only one importing grpc's private layer, is imported only when chosen.
"""

from gatehouse.transport.base import (
    ACTIVATE,
    Abort,
    AfterCall,
    Answered,
    BeforeCall,
    CallInfo,
    CallOutcome,
    Defer,
    InlineHandler,
    Later,
    Metadata,
    ServicerContext,
    TimeRemaining,
    Transport,
    TransportStats,
)
from gatehouse.transport.choose import CHOICES, CORE_TESTED, Choice, core_supports, open_transport

__all__ = [
    "ACTIVATE",
    "CHOICES",
    "CORE_TESTED",
    "Abort",
    "AfterCall",
    "Answered",
    "BeforeCall",
    "CallInfo",
    "CallOutcome",
    "Choice",
    "Defer",
    "InlineHandler",
    "Later",
    "Metadata",
    "ServicerContext",
    "TimeRemaining",
    "Transport",
    "TransportStats",
    "core_supports",
    "open_transport",
]
