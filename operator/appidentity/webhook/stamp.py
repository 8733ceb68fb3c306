"""Pure: the requester stamp and the mutation that sets it, byte for byte what the
MutatingAdmissionPolicy in deploy/requester-policy.yaml writes: the ValidatingAdmissionPolicy
beside it recomputes the stamp in CEL and refuses a write whose annotation differs by one byte.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from ..escalation import REQUESTER_ANNOTATION

_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}
_PATH = "/metadata/annotations/" + REQUESTER_ANNOTATION.replace("~", "~0").replace("/", "~1")


def cel_quote(text: str) -> str:
    """CEL's `strings.quote`: double quotes around the text, the nine escapes above, every other
    character as it is. A lone surrogate (JSON can carry one) becomes U+FFFD, as Go decodes it."""
    text = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return '"' + "".join(_ESCAPES.get(c, c) for c in text) + '"'


def stamp(user: Mapping[str, Any]) -> str:
    """The annotation's value for an AdmissionReview's userInfo; extra's keys in code-point
    order, as the policies sort them."""
    extra: Mapping[str, list[str]] = user.get("extra") or {}
    groups = ",".join(cel_quote(g) for g in user.get("groups") or [])
    pairs = ",".join(
        cel_quote(k) + ":[" + ",".join(cel_quote(v) for v in extra[k] or []) + "]"
        for k in sorted(extra)
    )
    return (
        '{"username":' + cel_quote(user.get("username") or "")
        + ',"uid":' + cel_quote(user.get("uid") or "")
        + ',"groups":[' + groups + '],"extra":{' + pairs + "}}"
    )  # fmt: skip


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, str] | None:
    meta = (obj or {}).get("metadata") or {}
    found: Mapping[str, str] | None = meta.get("annotations")
    return found


def mutation(request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch for one AdmissionReview request: the writer's stamp on a create or a spec
    change, the old stamp back on any other update, nothing where there was none (the
    ValidatingAdmissionPolicy then refuses an added one) or nothing would change."""
    obj, old = request["object"], request.get("oldObject")
    if request["operation"] == "CREATE" or old is None or obj.get("spec") != old.get("spec"):
        wanted = stamp(request["userInfo"])
    else:
        before = (_annotations(old) or {}).get(REQUESTER_ANNOTATION)
        if before is None:
            return []
        wanted = before
    now = _annotations(obj)
    if now is not None and now.get(REQUESTER_ANNOTATION) == wanted:
        return []
    ops: list[dict[str, Any]] = []
    if now is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    ops.append({"op": "add", "path": _PATH, "value": wanted})
    return ops


def review_response(review: Mapping[str, Any]) -> dict[str, Any]:
    """The admission.k8s.io/v1 AdmissionReview answering `review`. A review it cannot read is
    refused with the field it lacks (failurePolicy is Fail either way)."""
    request = review.get("request") or {}
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
    try:
        patch = mutation(request)
    except (KeyError, TypeError, AttributeError) as exc:
        response["allowed"] = False
        response["status"] = {"code": 400, "message": f"malformed AdmissionReview: {exc!r}"}
        patch = []
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
