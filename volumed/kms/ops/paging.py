"""Limit/Marker pagination of the List* operations. Markers are opaque to callers (an encoded
position); a marker this service did not issue is InvalidMarkerException."""

from __future__ import annotations

import base64
from collections.abc import Sequence

from volumed.kms.awsmodel import Response
from volumed.kms.ops.context import CallContext


def page(ctx: CallContext, items: Sequence[object], member: str, default_limit: int = 100) -> Response:
    """The response members for one page of ``items``: ``{member: [...], "Truncated": bool}`` and
    ``NextMarker`` when more follow. Limit and Marker come from the call's parameters."""
    limit = ctx.params.get("Limit") or default_limit
    start = 0
    marker = ctx.params.get("Marker")
    if marker is not None:
        try:
            text = base64.urlsafe_b64decode(marker.encode()).decode()
            if not text.startswith("vm:"):
                raise ValueError(text)
            start = int(text[3:])
            if start < 0:
                raise ValueError(text)
        except ValueError:
            raise ctx.error("InvalidMarkerException", "Marker is not valid") from None
    chunk = items[start:start + limit]
    out: Response = {member: list(chunk), "Truncated": start + limit < len(items)}
    if out["Truncated"]:
        out["NextMarker"] = base64.urlsafe_b64encode(f"vm:{start + limit}".encode()).decode()
    return out
