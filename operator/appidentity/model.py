"""The AppIdentity API as Python types.

The CRD's structural schema and CEL rules reject bad input at admission; these models repeat the
structural rules so that the operator refuses the same input with the same field names when it
meets an object that bypassed admission (an older CRD, a restored backup, a test).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from . import FIELD_MANAGER, GROUP, KIND, VERSION

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CLUSTER_ROLE_NAME = re.compile(
    r"^[a-z0-9]([-a-z0-9:]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9:]*[a-z0-9])?)*$"
)
MAX_IDENTITY_NAME = 63
MAX_LABEL_VALUE = 63
DEFAULT_TOKEN_SECONDS = 3600

MANAGED_BY = "app.kubernetes.io/managed-by"
IDENTITY_LABEL = "appidentity.dev/identity"
CONSENT_ANNOTATION = "appidentity.dev/accept-grants-from"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class FieldProblem(ValueError):
    """A problem with one field (or list item) below the model that finds it: the parser
    names `<model's path>.<field>` (or `[index]`), as the API server does for a CEL rule with
    a fieldPath, or for a duplicate list item."""

    def __init__(self, field: str | int, message: str) -> None:
        super().__init__(message)
        self.field = field


Text = Annotated[str, Field(min_length=1, max_length=253)]
Group = Annotated[str, Field(max_length=253)]
Verb = Annotated[str, Field(min_length=1, max_length=63)]
Url = Annotated[str, Field(min_length=1, max_length=1024)]


def _cluster_role_name(name: str) -> str:
    if len(name) > 253 or not CLUSTER_ROLE_NAME.match(name):
        raise ValueError(f"{name!r} is not a ClusterRole name")
    return name


ClusterRoleName = Annotated[str, AfterValidator(_cluster_role_name)]


class Rule(_Model):
    """One RBAC PolicyRule, as written in the spec."""

    # Absent or non-empty, as in the CRD (minItems 1); whether absent is allowed is the
    # subclass's business.
    api_groups: tuple[Group, ...] = Field(default=(), min_length=1, max_length=16)
    resources: tuple[Text, ...] = Field(default=(), min_length=1, max_length=32)
    verbs: tuple[Verb, ...] = Field(min_length=1, max_length=16)
    resource_names: tuple[Text, ...] = Field(default=(), max_length=64)
    non_resource_urls: tuple[Url, ...] = Field(
        default=(), min_length=1, max_length=32, alias="nonResourceURLs"
    )

    def to_k8s(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"verbs": list(self.verbs)}
        if self.non_resource_urls:
            out["nonResourceURLs"] = list(self.non_resource_urls)
            return out
        out["apiGroups"] = list(self.api_groups)
        out["resources"] = list(self.resources)
        if self.resource_names:
            out["resourceNames"] = list(self.resource_names)
        return out


class NamespacedRule(Rule):
    api_groups: tuple[Group, ...] = Field(min_length=1, max_length=16)
    resources: tuple[Text, ...] = Field(min_length=1, max_length=32)

    @model_validator(mode="before")
    @classmethod
    def _resource_rule(cls, data: Any) -> Any:
        # Said alone: a rule written for clusterRules lacks apiGroups too, but that is not news.
        if isinstance(data, dict) and "nonResourceURLs" in data:
            raise FieldProblem(
                "nonResourceURLs",
                "only spec.clusterRules may hold nonResourceURLs; a namespaced rule names "
                "apiGroups and resources",
            )
        return data


class ClusterRule(Rule):
    @model_validator(mode="after")
    def _one_kind(self) -> ClusterRule:
        # By presence, as the CRD's has(): an empty list is refused by its own length bound.
        urls = "non_resource_urls" in self.model_fields_set
        resources = bool({"api_groups", "resources"} & self.model_fields_set)
        if urls and resources:
            raise ValueError("set either nonResourceURLs, or apiGroups and resources")
        if not urls and not {"api_groups", "resources"} <= self.model_fields_set:
            raise ValueError("resource rules need both apiGroups and resources")
        return self


def _no_duplicates(keys: list[str]) -> None:
    """As the CRD's list-type set/map: the first repeated item is named."""
    seen: set[str] = set()
    for i, key in enumerate(keys):
        if key in seen:
            raise FieldProblem(i, f"Duplicate value: {key!r}")
        seen.add(key)


def _cluster_role_names(v: tuple[str, ...]) -> tuple[str, ...]:
    _no_duplicates(list(v))
    return v


class ServiceAccountSpec(_Model):
    name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN.pattern)
    automount_token: StrictBool = False
    labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32
    )
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, max_length=32
    )


class NamespaceGrant(_Model):
    name: str = Field(max_length=63, pattern=DNS_LABEL.pattern)
    rules: tuple[NamespacedRule, ...] = Field(default=(), max_length=32)
    cluster_roles: tuple[ClusterRoleName, ...] = Field(default=(), max_length=16)

    _roles = field_validator("cluster_roles")(_cluster_role_names)

    @model_validator(mode="after")
    def _grants_something(self) -> NamespaceGrant:
        if not self.rules and not self.cluster_roles:
            raise ValueError("set rules or clusterRoles")
        return self


class TokenSpec(_Model):
    type: Literal["Bound", "Legacy"] = "Bound"
    secret_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN.pattern)
    expiration_seconds: StrictInt | None = Field(default=None, ge=600, le=31_536_000)
    audiences: tuple[Text, ...] = Field(default=(), max_length=8)
    kubeconfig: StrictBool = True

    @model_validator(mode="after")
    def _bound_only(self) -> TokenSpec:
        if self.type == "Legacy" and (self.expiration_seconds is not None or self.audiences):
            raise ValueError("expirationSeconds and audiences apply only to type Bound")
        return self

    @property
    def lifetime_seconds(self) -> int:
        return self.expiration_seconds or DEFAULT_TOKEN_SECONDS


class AccessCheck(_Model):
    """A single (verb, group, resource[/subresource], namespace, name) question."""

    verb: str = Field(min_length=1, max_length=63)
    group: str = Field(default="", max_length=253)
    resource: str = Field(min_length=1, max_length=253)
    subresource: str = Field(default="", max_length=253)
    name: str = Field(default="", max_length=253)
    namespace: str = Field(default="", max_length=63)


class VerificationSpec(_Model):
    interval_seconds: StrictInt = Field(default=600, ge=30, le=86_400)
    must_deny: tuple[AccessCheck, ...] = Field(default=(), max_length=32)
    allow_excess: StrictBool = False


class Schedule(_Model):
    # RFC 3339 with an offset, as the CRD's date-time format demands: a local time is ambiguous.
    not_before: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Schedule:
        if self.not_before and self.expires_at and self.not_before >= self.expires_at:
            raise ValueError("notBefore must be before expiresAt")
        return self

    def active_at(self, now: datetime) -> bool:
        if self.not_before and now < self.not_before:
            return False
        return not (self.expires_at and now >= self.expires_at)

    def next_change_after(self, now: datetime) -> datetime | None:
        """The next instant at which active_at() flips, so the operator can wake up then."""
        for moment in (self.not_before, self.expires_at):
            if moment and moment > now:
                return moment
        return None


class AppIdentitySpec(_Model):
    service_account: ServiceAccountSpec = ServiceAccountSpec()
    rules: tuple[NamespacedRule, ...] = Field(default=(), max_length=32)
    cluster_roles: tuple[ClusterRoleName, ...] = Field(default=(), max_length=16)
    namespaces: tuple[NamespaceGrant, ...] = Field(default=(), max_length=32)
    cluster_rules: tuple[ClusterRule, ...] = Field(default=(), max_length=32)
    token: TokenSpec = TokenSpec()
    verification: VerificationSpec = VerificationSpec()
    schedule: Schedule = Schedule()

    _roles = field_validator("cluster_roles")(_cluster_role_names)

    @field_validator("namespaces")
    @classmethod
    def _unique_namespaces(cls, v: tuple[NamespaceGrant, ...]) -> tuple[NamespaceGrant, ...]:
        _no_duplicates([g.name for g in v])
        return v


class Identity(_Model):
    """Everything the pure decisions need to know about one AppIdentity object."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: AppIdentitySpec

    @property
    def key(self) -> str:
        return identity_key(self.namespace, self.name)

    @property
    def service_account(self) -> str:
        return self.spec.service_account.name or self.name

    @property
    def secret_name(self) -> str:
        return self.spec.token.secret_name or f"{self.name}-token"

    @property
    def subject(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    # The two below are shared by every child built from this Identity: never edit in place.
    @cached_property
    def labels(self) -> dict[str, str]:
        return {MANAGED_BY: FIELD_MANAGER, IDENTITY_LABEL: self.key}

    @cached_property
    def owner_references(self) -> list[dict[str, Any]]:
        """What the children in the identity's own namespace point at (as their controller)."""
        return [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": self.name,
                "uid": self.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]

    @property
    def grant_namespaces(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.spec.namespaces)

    @property
    def cluster_role_names(self) -> set[str]:
        """Every existing ClusterRole the spec binds, here or in other namespaces."""
        return set(self.spec.cluster_roles).union(*(g.cluster_roles for g in self.spec.namespaces))


def identity_key(namespace: str, name: str) -> str:
    """The value of the appidentity.dev/identity label: `<namespace>.<name>` when that fits in a
    label value (63 characters), otherwise a readable prefix and a hash of the full pair."""
    full = f"{namespace}.{name}"
    if len(full) <= MAX_LABEL_VALUE:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:12]
    prefix = full[: MAX_LABEL_VALUE - len(digest) - 1].rstrip("-.")
    return f"{prefix}-{digest}"


class SpecError(ValueError):
    """Bad input, with every problem named by its field path (e.g. `spec.rules[0].verbs`)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


MAPS = ("labels", "annotations")  # their keys are the user's, never camel-cased


def _field_path(loc: tuple[int | str, ...]) -> str:
    path, previous = "spec", ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{to_camel(part) if '_' in part and previous not in MAPS else part}"
        previous = str(part)
    return path


def _item_artefact(err: Any, errors: list[Any]) -> bool:
    """pydantic counts a list's length after dropping its invalid items, so one bad item of
    a one-item list also reads "too short"; the API server (and the user) hear of the item."""
    loc = err["loc"]
    return err["type"] == "too_short" and any(
        len(other["loc"]) > len(loc) and other["loc"][: len(loc)] == loc for other in errors
    )


def parse_identity(body: dict[str, Any]) -> Identity:
    """Turns an AppIdentity object into an Identity, or raises SpecError naming each field."""
    meta = body.get("metadata", {})
    name = meta.get("name", "")
    namespace = meta.get("namespace", "")
    problems: list[str] = []
    if len(name) > MAX_IDENTITY_NAME or not DNS_LABEL.match(name):
        problems.append(
            f"metadata.name: must be a DNS-1123 label of at most {MAX_IDENTITY_NAME} characters"
        )
    try:
        if body.get("spec") is None:
            problems.append("spec: Required value")  # the CRD's `required: [spec]`
        spec = AppIdentitySpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        for err in [e for e in errors if not _item_artefact(e, errors)]:
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, FieldProblem):
                loc += (cause.field,)
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_field_path(loc)}: {msg}")
        spec = None
    if problems or spec is None:
        raise SpecError(problems)
    return Identity(
        namespace=namespace,
        name=name,
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation", 0)),
        spec=spec,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
