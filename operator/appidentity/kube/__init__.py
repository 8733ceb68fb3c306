"""The only place that talks to the API server.

Objects travel as plain dicts (the builders' output): server-side apply under one field
manager, reads, deletes, TokenRequest, status patches, and clients that authenticate with
nothing but a minted token (`rest`: the requests any client makes; `client`: the operator's
own; `transport`: how they travel). No decisions are made here.
"""

from .client import Kube
from .rest import ApiError, Http, load_configuration, path_for, public_openid
from .transport import (
    ClientTransport,
    OwnTransport,
    TokenTransport,
    credential_free,
    token_transport,
)

__all__ = [
    "ApiError",
    "ClientTransport",
    "Http",
    "Kube",
    "OwnTransport",
    "TokenTransport",
    "credential_free",
    "load_configuration",
    "path_for",
    "public_openid",
    "token_transport",
]
