"""gatehouse: tenancy and authorization over gRPC."""

from gatehouse.errors import (
    DataFileError,
    FailedPrecondition,
    GatehouseError,
    InvalidArgument,
    NotFound,
    PolicyError,
    Problem,
    Unavailable,
)

__version__ = "0.1.0"

__all__ = [
    "DataFileError",
    "FailedPrecondition",
    "GatehouseError",
    "InvalidArgument",
    "NotFound",
    "PolicyError",
    "Problem",
    "Unavailable",
    "__version__",
]
