"""The operator policy rendered into everything of deploy/ that depends on it, from one file.

An installation holds the policy three times, by necessity: the operator reads it from the
`appidentity-policy` ConfigMap, the API server judges with the ValidatingAdmissionPolicy's
parameter variables (CEL constants: a ConfigMap parameter goes stale on Kubernetes 1.37, see
deploy/admission-policy.yaml), and the operator's `bind` right must name exactly the allowed
ClusterRoles. `component()` renders all three from one `Policy` as a kustomize Component over
deploy/, so a policy change is written once (`appidentity-operator policy-manifests`); the Helm
chart does the same from `values.policy`. Pure: no file or cluster access here.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from .policy import Policy

POLICY_CONFIGMAP = "appidentity-policy"
POLICY_KEY = "policy.yaml"
OPERATOR_NAMESPACE = "appidentity-system"
ADMISSION_POLICY = "appidentity-policy"
BIND_ROLE = "appidentity-operator-bind"
# Only kustomize sees it: the local-config annotation keeps it out of the rendered output.
PARAMETERS_SOURCE = "appidentity-policy-admission-parameters"

# Each parameter variable of the admission policy and the policy field it holds.
ADMISSION_PARAMETERS: dict[str, tuple[str, ...]] = {
    "allowWildcards": ("allowWildcards",),
    "secretsAllowList": ("secrets", "allowList"),
    "secretsAllowWatch": ("secrets", "allowWatch"),
    "secretsGetRequiresResourceNames": ("secrets", "getRequiresResourceNames"),
    "allowedClusterRoles": ("allowedClusterRoles",),
    "clusterRulesAllowedNamespaces": ("clusterRules", "allowedNamespaces"),
    "maxExpirationSeconds": ("token", "maxExpirationSeconds"),
    "allowLegacy": ("token", "allowLegacy"),
    "forbiddenVerbs": ("forbiddenVerbs",),
    "extraVerbs": ("extraVerbs",),
    "forbiddenResources": ("forbiddenResources",),
}


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the patches, policy.yaml) as readable `|` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def _dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, width=1000)


def policy_document(policy: Policy) -> dict[str, Any]:
    """The whole policy, every default spelled out, as the operator's policy file has it."""
    document: dict[str, Any] = policy.model_dump(by_alias=True, mode="json")
    return document


def admission_parameters(policy: Policy) -> dict[str, str]:
    """Variable name -> CEL expression. JSON's booleans, integers, strings and lists are CEL
    literals of the same value."""
    document = policy_document(policy)
    parameters: dict[str, str] = {}
    for name, path in ADMISSION_PARAMETERS.items():
        value: Any = document
        for key in path:
            value = value[key]
        parameters[name] = json.dumps(value)
    return parameters


def bind_rules(policy: Policy) -> list[dict[str, Any]]:
    """The operator's `bind` right: on exactly the allowed ClusterRoles. No roles, no rule: an
    empty resourceNames would allow binding every ClusterRole."""
    if not policy.allowed_cluster_roles:
        return []
    return [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "verbs": ["bind"],
            "resourceNames": list(policy.allowed_cluster_roles),
        }
    ]


def component(policy: Policy) -> dict[str, Any]:
    """A kustomize Component over deploy/ that installs `policy` everywhere it is needed.

    The ConfigMap and the bind ClusterRole are replaced with strategic-merge patches. The
    admission policy's variables list is atomic (a patch would replace every variable), so the
    parameters are set by name with `replacements` from a local-config ConfigMap, which fail the
    build if deploy/ no longer has a variable of that name.
    """
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": POLICY_CONFIGMAP, "namespace": OPERATOR_NAMESPACE},
        "data": {POLICY_KEY: _dump(policy_document(policy))},
    }
    bind_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": BIND_ROLE},
        "rules": bind_rules(policy),
    }
    parameters = admission_parameters(policy)
    return {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "patches": [{"patch": _dump(configmap)}, {"patch": _dump(bind_role)}],
        "configMapGenerator": [
            {
                "name": PARAMETERS_SOURCE,
                "options": {
                    "disableNameSuffixHash": True,
                    "annotations": {"config.kubernetes.io/local-config": "true"},
                },
                "literals": [f"{name}={cel}" for name, cel in parameters.items()],
            }
        ],
        "replacements": [
            {
                "source": {
                    "kind": "ConfigMap",
                    "name": PARAMETERS_SOURCE,
                    "fieldPath": f"data.{name}",
                },
                "targets": [
                    {
                        "select": {"kind": "ValidatingAdmissionPolicy", "name": ADMISSION_POLICY},
                        "fieldPaths": [f"spec.variables.[name={name}].expression"],
                    }
                ],
            }
            for name in parameters
        ],
    }


def component_yaml(policy: Policy, source: str) -> str:
    """`component()` as the kustomization.yaml of a Component directory."""
    header = (
        f"# Generated by `appidentity-operator policy-manifests --policy {source}`: do not edit,\n"
        "# change the policy file and generate again. A kustomize Component over deploy/ that\n"
        "# puts the policy into the operator's ConfigMap, the admission policy's parameters and\n"
        "# the operator's `bind` right; list this directory under `components:`.\n"
    )
    return header + _dump(component(policy))
