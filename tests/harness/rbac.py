"""The chart's RBAC on a real kube-apiserver: applied as helm would, used as its ServiceAccount, and
revoked one verb at a time.

Owns: the REST paths of the objects an RBAC test applies, applying rendered objects (server-side
apply, field manager ``helm``), TokenRequest tokens for a ServiceAccount, SubjectAccessReviews, and
the revoke-wait-restore cycle of the "no verb is superfluous" tests.

Must not: know which operations a component performs, or which refusal they end in: each test
passes those in.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from actuator.kube import KubeClient, Obj
from tests.harness.k8s import wait_for

RBAC_KINDS = frozenset({"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"})
RULE_KINDS = frozenset({"ClusterRole", "Role"})
"""The kinds that hold rules (the bindings only point at them)."""
CLUSTER_RBAC = frozenset({"ClusterRole", "ClusterRoleBinding"})
"""The RBAC kinds that outlive a test's namespace (see :func:`delete_cluster_rbac`)."""

_PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "PriorityClass": "priorityclasses",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "Role": "roles",
    "RoleBinding": "rolebindings",
}


def object_path(obj: Obj) -> str:
    """The REST path of ``obj`` (one of the kinds an RBAC test applies)."""
    group_version = obj["apiVersion"]
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    namespace = obj["metadata"].get("namespace")
    middle = f"/namespaces/{namespace}" if namespace else ""
    return f"{root}{middle}/{_PLURALS[obj['kind']]}/{obj['metadata']['name']}"


def apply_as_helm(admin: KubeClient, docs: Iterable[Obj]) -> None:
    """Apply rendered objects as ``helm`` would own them (server-side apply)."""
    for doc in docs:
        admin.apply(object_path(doc), doc, field_manager="helm", dry_run=False)


def delete_cluster_rbac(admin: KubeClient, docs: Iterable[Obj]) -> None:
    """Delete the ClusterRoles and ClusterRoleBindings among ``docs`` (the namespaced rest goes
    with the test's namespace)."""
    for doc in docs:
        if doc["kind"] in CLUSTER_RBAC:
            admin.delete(object_path(doc), dry_run=False)


def service_account_token(admin: KubeClient, namespace: str, account: str) -> str:
    """A one-hour token for ServiceAccount ``namespace/account`` (the TokenRequest API)."""
    answer = admin.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"expirationSeconds": 3600}},
        dry_run=False,
    )  # fmt: skip
    token: str = answer["status"]["token"]
    return token


def service_account_user(namespace: str, account: str) -> str:
    """The user name the apiserver's authorizer sees for that ServiceAccount."""
    return f"system:serviceaccount:{namespace}:{account}"


@dataclass(frozen=True)
class Grant:
    """One verb of one rule of a rendered Role or ClusterRole."""

    role: Obj
    index: int
    verb: str

    @property
    def rule(self) -> Obj:
        rule: Obj = self.role["rules"][self.index]
        return rule

    @property
    def namespace(self) -> str | None:
        namespace: str | None = self.role["metadata"].get("namespace")
        return namespace

    @property
    def group(self) -> str:
        group: str = self.rule["apiGroups"][0]
        return group

    @property
    def resource(self) -> str:
        """The rule's first resource, with its subresource (``deployments/scale``)."""
        resource: str = self.rule["resources"][0]
        return resource

    @property
    def name(self) -> str:
        """The rule's first resourceName ("" when the rule names none)."""
        name: str = (self.rule.get("resourceNames") or [""])[0]
        return name

    def without(self) -> Obj:
        """The role without this verb (the whole rule goes when it was its only verb)."""
        reduced = copy.deepcopy(self.role)
        rest = [verb for verb in self.rule["verbs"] if verb != self.verb]
        if rest:
            reduced["rules"][self.index]["verbs"] = rest
        else:
            del reduced["rules"][self.index]
        return reduced


def grants(roles: Sequence[Obj]) -> list[Grant]:
    """Every verb of every rule of ``roles``, in the order rendered."""
    return [
        Grant(role, index, verb)
        for role in roles
        for index, rule in enumerate(role["rules"])
        for verb in rule["verbs"]
    ]


def allowed(admin: KubeClient, user: str, grant: Grant) -> bool:
    """What the apiserver's authorizer answers now for ``user`` and ``grant`` (a
    SubjectAccessReview with the grant's namespace, resource, subresource and name)."""
    resource, _, subresource = grant.resource.partition("/")
    attributes: dict[str, Any] = {
        "verb": grant.verb, "group": grant.group, "resource": resource,
        "subresource": subresource, "name": grant.name,
    }  # fmt: skip
    if grant.namespace:
        attributes["namespace"] = grant.namespace
    review = admin.create(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
         "spec": {"user": user, "groups": ["system:serviceaccounts", "system:authenticated"],
                  "resourceAttributes": attributes}},
        dry_run=False,
    )  # fmt: skip
    return bool(review["status"].get("allowed"))


@contextmanager
def revoked(
    admin: KubeClient, user: str, grant: Grant, *, then: Callable[[], None]
) -> Iterator[None]:
    """Within the block ``grant`` is revoked from ``user``; after it the rendered role is applied
    again and ``then`` (the test's cleanup of half-finished operations) runs, also on failure.

    RBAC is enforced from an informer cache, so both ways this waits until the authorizer itself
    (a SubjectAccessReview) sees the change, not only until the apply returns.
    """
    path = object_path(grant.role)
    what = f"{grant.verb} {grant.resource}"
    admin.apply(path, grant.without(), field_manager="helm", dry_run=False)
    wait_for(lambda: not allowed(admin, user, grant), what=f"{what} revoked")
    try:
        yield
    finally:
        admin.apply(path, grant.role, field_manager="helm", dry_run=False)
        wait_for(lambda: allowed(admin, user, grant), what=f"{what} granted again")
        then()
