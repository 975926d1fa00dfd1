"""The actuator's one door to the Kubernetes API: REST over the official client's ``ApiClient``.

Owns: building resource paths, server-side apply (``application/apply-patch+yaml``), JSON merge
patches with optimistic concurrency, get/delete, paginated lists (restarted on 410 Gone; prewarm
never watches, so that is the one place a 410 can reach it), ``dryRun=All``, retrying temporary
failures (429 with ``Retry-After``, 5xx, connection errors, an apiserver that is restarting) with
capped exponential backoff, and turning every other failure into a :mod:`common.errors` kind.

Must not: decide anything (the operation modules do), build its own credentials (the ``ApiClient``
is a constructor parameter; :func:`default_api_client` is the production default), or retry a
409 Conflict itself (only the caller can re-read and recompute its write).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from actuator.config import RetryConfig
from common.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    TemporaryError,
)

_log = logging.getLogger(__name__)

Obj = dict[str, Any]
"""A Kubernetes object as the API returns it (decoded JSON)."""

Objs = list[Obj]
"""Objects of a list call (an alias: inside :class:`KubeClient`, ``list`` names its method)."""

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class Conflict(FailedPrecondition):
    """409: the object changed since it was read (or already exists). Re-read, recompute, retry."""


class Gone(TemporaryError):
    """410: the resourceVersion or continue token asked for is older than etcd keeps. Start over."""


def default_api_client() -> k8s_client.ApiClient:
    """The production default: in-cluster credentials, else the local kubeconfig."""
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
    return k8s_client.ApiClient()


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource type: ``Resource("apps/v1", "deployments")``; core types use ``"v1"``."""

    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, *, sub: str = "") -> str:
        """The REST path of the collection (``name`` None) or of one object or its subresource."""
        root = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        parts = [root]
        if self.namespaced and namespace is not None:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name is not None:
            parts.append(quote(name, safe=""))
            if sub:
                parts.append(sub)
        return "/".join(parts)


PODS = Resource("v1", "pods")
EVENTS = Resource("v1", "events")
NODES = Resource("v1", "nodes", namespaced=False)
DEPLOYMENTS = Resource("apps/v1", "deployments")
STATEFULSETS = Resource("apps/v1", "statefulsets")
INFERENCE_SERVICES = Resource("serving.kserve.io/v1beta1", "inferenceservices")
"""KServe InferenceServices (their floor is ``spec.predictor.minReplicas``)."""
KNATIVE_SERVICES = Resource("serving.knative.dev/v1", "services")
"""Knative Serving Services (their floor is the revision template's ``min-scale`` annotation)."""
HPAS = Resource("autoscaling/v2", "horizontalpodautoscalers")
SCALED_OBJECTS = Resource("keda.sh/v1alpha1", "scaledobjects")


class KubeClient:
    """Kubernetes REST calls with retries and typed errors.

    ``api`` is an authenticated ``kubernetes.client.ApiClient`` (admin kubeconfig, ServiceAccount
    token, ...). ``sleep`` is injectable so tests of backoff need not wait. Every write takes
    ``dry_run``; when true the request carries ``dryRun=All``: the apiserver validates and admits it
    but persists nothing. ``fence`` (the leader Lease's check) runs before every attempt of every
    write that is not a dry run and raises to refuse it.
    """

    def __init__(
        self,
        api: k8s_client.ApiClient,
        retry: RetryConfig | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        page_size: int = 500,
        fence: Callable[[], None] | None = None,
    ) -> None:
        self._api = api
        self._fence = fence
        self._retry = retry or RetryConfig()
        self._sleep = sleep
        self._page_size = page_size

    # -- reads -----------------------------------------------------------------------------------

    def get(self, path: str) -> Obj | None:
        """The object at ``path``, or None when it does not exist (404)."""
        try:
            return self._call("GET", path)
        except NotFound:
            return None

    def list(
        self, path: str, *, label_selector: str | None = None, field_selector: str | None = None
    ) -> list[Obj]:
        """Every item of the collection at ``path`` (all pages), optionally label/field-selected.

        The pages form one consistent snapshot. If the snapshot expires between pages (410 Gone:
        etcd compacted the revision the continue token points at), the list starts over, so an
        item is never missed or returned twice.
        """
        for _ in range(self._retry.attempts):
            try:
                return self._list_once(
                    path, label_selector=label_selector, field_selector=field_selector
                )
            except Gone as error:
                _log.info("kubernetes list %s: %s; listing again from the start", path, error)
        raise TemporaryError(f"GET {path}: the list kept expiring (410 Gone); retry later")

    def _list_once(
        self, path: str, *, label_selector: str | None, field_selector: str | None
    ) -> Objs:
        items: Objs = []
        token: str | None = None
        while True:
            query: list[tuple[str, str]] = [("limit", str(self._page_size))]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if field_selector:
                query.append(("fieldSelector", field_selector))
            if token:
                query.append(("continue", token))
            page = self._call("GET", path, query=query)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    def served(self, api_version: str) -> bool:
        """Whether the API server serves ``api_version`` (e.g. whether a CRD is installed)."""
        root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        return self.get(root) is not None

    # -- writes ----------------------------------------------------------------------------------

    def apply(
        self, path: str, body: Mapping[str, Any], *, field_manager: str, dry_run: bool
    ) -> Obj:
        """Server-side apply ``body`` at ``path`` (the object's own path) as ``field_manager``.

        ``force=true``: prewarm owns the objects it applies, so it takes over any field another
        manager set on them (without force such a field is a 409 conflict, not a merge).
        """
        query = [("fieldManager", field_manager), ("force", "true")]
        return self._call(
            "PATCH", path, body=dict(body), query=query, content_type=APPLY_PATCH, dry_run=dry_run
        )

    def merge_patch(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        field_manager: str,
        dry_run: bool,
        resource_version: str | None = None,
    ) -> Obj:
        """JSON merge patch; with ``resource_version`` the write only lands on that exact version
        (the apiserver answers 409, raised as :class:`Conflict`, when the object changed since)."""
        patch = dict(body)
        if resource_version is not None:
            metadata = dict(patch.get("metadata") or {})
            metadata["resourceVersion"] = resource_version
            patch["metadata"] = metadata
        query = [("fieldManager", field_manager)]
        return self._call(
            "PATCH", path, body=patch, query=query, content_type=MERGE_PATCH, dry_run=dry_run
        )

    def create(self, path: str, body: Mapping[str, Any], *, dry_run: bool) -> Obj:
        """POST ``body`` to the collection at ``path`` (e.g. a TokenRequest subresource)."""
        return self._call("POST", path, body=dict(body), dry_run=dry_run)

    def delete(self, path: str, *, dry_run: bool, propagation: str = "Background") -> bool:
        """Delete the object at ``path``; False when it was already gone (idempotent)."""
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if dry_run:
            # With a DeleteOptions body the apiserver reads the options from the body only, so
            # the ?dryRun=All query parameter would be ignored: dry-run goes in the body too.
            body["dryRun"] = ["All"]
        try:
            self._call("DELETE", path, body=body, dry_run=dry_run)
        except NotFound:
            return False
        return True

    # -- transport -------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Obj | None = None,
        query: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json",
        dry_run: bool = False,
    ) -> Obj:
        params = list(query)
        if dry_run:
            params.append(("dryRun", "All"))
        retry = self._retry
        backoff = retry.initial_backoff_s
        for attempt in range(1, retry.attempts + 1):
            if self._fence is not None and method != "GET" and not dry_run:
                self._fence()  # every attempt: an old leader's retries stop once it lost
            try:
                return self._once(method, path, body=body, query=params, content_type=content_type)
            except _Retryable as error:
                if attempt == retry.attempts:
                    raise TemporaryError(
                        f"{method} {path} failed {attempt} times, last: {error.message}; the API "
                        "server is overloaded or unreachable, retry later"
                    ) from error
                wait = min(max(backoff, error.retry_after_s), retry.max_backoff_s)
                # DEBUG: the caller reports a call that fails in the end; an attempt that is
                # retried is noise while the API server is down (every call of every tick).
                _log.debug(
                    "kubernetes %s %s: %s; retry %d/%d in %.2f s",
                    method, path, error.message, attempt, retry.attempts - 1, wait,
                )  # fmt: skip
                self._sleep(wait)
                backoff = min(backoff * 2, retry.max_backoff_s)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(
        self,
        method: str,
        path: str,
        *,
        body: Obj | None,
        query: Sequence[tuple[str, str]],
        content_type: str,
    ) -> Obj:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        _, url, headers, _, _ = self._api.param_serialize(
            method,
            path,
            query_params=list(query),
            header_params=headers,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(
                method,
                url,
                header_params=headers,
                body=body,
                _request_timeout=self._retry.request_timeout_s,
            )
            data = response.read()  # type: ignore[no-untyped-call]
        except ApiException as error:
            # The REST layer reports TLS failures as status 0: the server is (re)starting.
            raise _Retryable(f"no answer ({error.reason})") from error
        except urllib3.exceptions.HTTPError as error:
            # Connection refused or reset, read timeout: an apiserver restarting or overloaded.
            raise _Retryable(f"no answer ({type(error).__name__}: {error})") from error
        status = int(response.status)
        text = data.decode("utf-8", errors="replace") if data else ""
        if 200 <= status < 300:
            return json.loads(text) if text else {}
        message = _status_message(text) or response.reason or ""
        where = f"{method} {path}"
        if status in _RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {status} {message}", _retry_after_s(response))
        if status == 404:
            raise NotFound(f"{where}: not found ({message})")
        if status == 409:
            raise Conflict(f"{where}: conflict ({message})")
        if status == 410:
            raise Gone(f"{where}: gone ({message})")
        if status in (401, 403):
            raise PermissionDenied(
                f"{where}: forbidden ({message}); grant the verb in the chart's RBAC"
            )
        if status in (400, 422):
            raise InvalidInput(f"{where}: rejected as invalid ({message})")
        raise TemporaryError(f"{where}: HTTP {status} ({message})")


class _Retryable(Exception):
    """A failure worth retrying after ``retry_after_s`` (at least the backoff)."""

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


def _status_message(text: str) -> str:
    try:
        decoded = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(decoded, dict):
        return str(decoded.get("message") or "")
    return ""


def _retry_after_s(response: Any) -> float:
    # 429 from API Priority and Fairness carries Retry-After (whole seconds).
    value = response.getheader("Retry-After") if hasattr(response, "getheader") else None
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


def owner_labels(component: str) -> dict[str, str]:
    """Labels on every object prewarm creates: who manages it and which part of prewarm."""
    return {
        "app.kubernetes.io/managed-by": "prewarm",
        "app.kubernetes.io/part-of": "prewarm",
        "app.kubernetes.io/component": component,
    }


MANAGED_SELECTOR = "app.kubernetes.io/managed-by=prewarm"


def generation(obj: Obj) -> int:
    """``metadata.generation`` of ``obj`` (0 when absent): it changes with every spec change."""
    return int((obj.get("metadata") or {}).get("generation") or 0)
