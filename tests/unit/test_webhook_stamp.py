"""webhook/stamp.py: the stamp the requester webhook writes, which the ValidatingAdmissionPolicy
recomputes in CEL (strings.quote) and must match byte for byte."""

from __future__ import annotations

import base64
import json
from typing import Any

from appidentity.escalation import REQUESTER_ANNOTATION, parse_stamp
from appidentity.webhook.stamp import cel_quote, mutation, review_response, stamp

USER = {
    "username": 'o\'brien "x"\\y',
    "uid": "u-1",
    "groups": ["a,b", "system:authenticated"],
    "extra": {"z/k": ["2"], "a/k": ["1", 'q"']},
}
PATH = "/metadata/annotations/appidentity.dev~1requester"


def test_cel_quote_escapes_exactly_what_strings_quote_escapes() -> None:
    assert cel_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert cel_quote("\a\b\f\n\r\t\v") == '"\\a\\b\\f\\n\\r\\t\\v"'
    assert cel_quote("\x01é✓") == '"\x01é✓"'  # other control characters and non-ASCII as is
    assert cel_quote("\ud800") == '"\ufffd"'  # a lone surrogate, as Go decodes it


def test_the_stamp_sorts_extra_and_reads_back_as_the_same_user() -> None:
    text = stamp(USER)
    assert text.index('"a/k"') < text.index('"z/k"')
    assert " " not in text.replace("o'brien ", "")
    back = parse_stamp(text)
    assert back.username == USER["username"] and back.uid == "u-1"
    assert back.groups == ("a,b", "system:authenticated")
    assert dict(back.extra) == {"a/k": ("1", 'q"'), "z/k": ("2",)}


def test_missing_user_fields_are_empty() -> None:
    assert stamp({"username": "u"}) == '{"username":"u","uid":"","groups":[],"extra":{}}'


def _request(op: str, obj: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"uid": "r1", "operation": op, "userInfo": USER, "object": obj, "oldObject": old}


def _obj(spec: Any, stamp_value: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "app"}
    if stamp_value is not None:
        meta["annotations"] = {REQUESTER_ANNOTATION: stamp_value}
    return {"metadata": meta, "spec": spec}


def test_a_create_is_stamped_with_its_writer_whatever_it_carries() -> None:
    assert mutation(_request("CREATE", _obj({"a": 1}))) == [
        {"op": "add", "path": "/metadata/annotations", "value": {}},
        {"op": "add", "path": PATH, "value": stamp(USER)},
    ]
    forged = mutation(_request("CREATE", _obj({"a": 1}, "forged")))
    assert forged == [{"op": "add", "path": PATH, "value": stamp(USER)}]


def test_a_spec_change_through_a_forged_stamp_records_the_real_writer() -> None:
    patch = mutation(_request("UPDATE", _obj({"a": 2}, "forged"), _obj({"a": 1}, "alice")))
    assert patch == [{"op": "add", "path": PATH, "value": stamp(USER)}]


def test_other_updates_keep_the_old_stamp() -> None:
    restored = mutation(_request("UPDATE", _obj({"a": 1}, "forged"), _obj({"a": 1}, "alice")))
    assert restored == [{"op": "add", "path": PATH, "value": "alice"}]
    removed = mutation(_request("UPDATE", _obj({"a": 1}), _obj({"a": 1}, "alice")))
    assert removed[-1] == {"op": "add", "path": PATH, "value": "alice"}
    assert mutation(_request("UPDATE", _obj({"a": 1}, "alice"), _obj({"a": 1}, "alice"))) == []


def test_an_unstamped_identity_is_not_stamped_by_a_metadata_write() -> None:
    """As the policy: nothing to keep, and an added stamp is the ValidatingAdmissionPolicy's
    to refuse."""
    assert mutation(_request("UPDATE", _obj({"a": 1}, "forged"), _obj({"a": 1}))) == []


def test_the_review_response_carries_the_patch_and_refuses_what_it_cannot_read() -> None:
    answer = review_response({"request": _request("CREATE", _obj({"a": 1}))})["response"]
    assert answer["uid"] == "r1" and answer["allowed"] and answer["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(answer["patch"]))[-1]["value"] == stamp(USER)
    bad = review_response({"request": {"uid": "r2", "operation": "CREATE"}})["response"]
    assert bad["allowed"] is False and "object" in bad["status"]["message"]
