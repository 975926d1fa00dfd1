"""Sleeping and waking serving engines' replicas through the engines' own HTTP endpoints.

Owns :class:`Engines`: for a model whose catalog ``engine`` can sleep (:mod:`planner.engines`),
finding its workload's ready pods, asking each whether it sleeps, and applying the plan's
:class:`planner.actions.EngineSleep` actions:

- vLLM (``--enable-sleep-mode``, ``VLLM_SERVER_DEV_MODE=1``): ``POST /sleep?level=N``,
  ``POST /wake_up``, ``GET /is_sleeping`` -> ``{"is_sleeping": bool}``;
- SGLang: ``POST /release_memory_occupation`` and ``POST /resume_memory_occupation`` (JSON
  ``{}``). SGLang has no endpoint that says whether it sleeps: a replica counts as asleep when this
  process put it to sleep and has not woken it (a restarted daemon sees SGLang replicas awake).

A pod's engine is called at its ``prewarm.io/engine-address`` annotation (host:port) when set,
else at its pod IP and the catalog's port. Each wake is timed: its duration is the model's
``Stage.WAKE`` observation, handed to the observer through :meth:`Engines.take_wakes`. A pod that
does not answer is left as it is and reported; the other pods and models go on. Blocking I/O
(called from the actuator's and observer's worker threads).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from actuator.floors import workload_resource
from actuator.kube import PODS, KubeClient, Obj
from actuator.selectors import selector_matches
from common.errors import PrewarmError
from common.ids import ModelId
from planner.actions import EngineSleep
from planner.catalog import Catalog
from planner.engines import EngineSpec
from planner.leadtime import Stage, StageObservation
from planner.planner import workload_for

_log = logging.getLogger(__name__)

ENGINE_ADDRESS_ANNOTATION = "prewarm.io/engine-address"
"""A serving pod's engine address (host:port), when it is not the pod IP and the catalog's port."""
TIMEOUT_S = 2.0
"""Per call; waking a large model at level 1 takes seconds (vLLM publishes up to 6 s)."""
WAKE_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class EngineResult:
    """What applying one EngineSleep did: pods changed, pods already so, and failures."""

    action: EngineSleep
    changed: int = 0
    already: int = 0
    errors: tuple[str, ...] = ()


Post = Callable[..., requests.Response]


class Engines:
    """The serving engines of the catalog's sleep-capable models (see the module docstring)."""

    def __init__(
        self, kube: KubeClient, catalog: Catalog, *, fence: Callable[[], None] | None = None
    ) -> None:
        self._kube = kube
        self._fence = fence
        self._catalog = catalog
        self._session = requests.Session()
        self._lock = threading.Lock()
        self._sglang_asleep: set[str] = set()
        self._wakes: list[StageObservation] = []

    def models(self) -> list[ModelId]:
        """The catalog's models whose replicas may sleep."""
        return [
            m for m, s in self._catalog.specs.items() if s.engine is not None and s.engine.sleep
        ]

    def pods(self, model: ModelId) -> list[Obj]:
        """The model's workload's Running, Ready, not terminating pods (read from the API)."""
        workload = workload_for(self._catalog.spec(model))
        found = self._kube.get(workload_resource(workload).path(workload.namespace, workload.name))
        return ready_pods(found, self._kube.list(PODS.path(workload.namespace)), workload.namespace)

    def asleep(self, model: ModelId, pods: Sequence[Obj]) -> int:
        """How many of ``pods`` (the model's ready pods) sleep; a pod that does not answer counts
        as awake (it will be asked again next tick)."""
        engine = self._engine(model)
        count = 0
        for pod in pods:
            if engine.kind == "sglang":
                count += _uid(pod) in self._sglang_asleep
                continue
            try:
                answer = self._session.get(
                    f"http://{_address(pod, engine)}/is_sleeping", timeout=TIMEOUT_S
                )
                answer.raise_for_status()
                count += bool(_json(answer).get("is_sleeping"))
            except (requests.RequestException, ValueError) as error:
                _log.debug("engine of pod %s: is_sleeping unknown: %s", _name(pod), error)
        return count

    def apply(self, actions: Sequence[EngineSleep], *, dry_run: bool) -> list[EngineResult]:
        """Sleep or wake every ready pod of each action's model; one result per action."""
        results: list[EngineResult] = []
        for action in actions:
            engine = self._engine(action.model)
            try:
                pods = self.pods(action.model)
            except Exception as error:  # noqa: BLE001 - a Kubernetes failure fails this action only
                results.append(EngineResult(action, errors=(f"listing pods: {error}",)))
                continue
            changed = already = 0
            errors: list[str] = []
            for pod in pods:
                try:
                    if self._set(action.model, pod, engine, asleep=action.asleep, dry_run=dry_run):
                        changed += 1
                    else:
                        already += 1
                except (requests.RequestException, ValueError, PrewarmError) as error:
                    errors.append(f"pod {_name(pod)}: {error}")
            results.append(EngineResult(action, changed, already, tuple(errors)))
        return results

    def take_wakes(self) -> list[StageObservation]:
        """The wake-up durations measured since the last call."""
        with self._lock:
            wakes, self._wakes = self._wakes, []
        return wakes

    def _engine(self, model: ModelId) -> EngineSpec:
        engine = self._catalog.spec(model).engine
        if engine is None:
            raise ValueError(f"model {model} has no engine in the catalog")
        return engine

    def _set(
        self, model: ModelId, pod: Obj, engine: EngineSpec, *, asleep: bool, dry_run: bool
    ) -> bool:
        """Put one pod's engine in the wanted state; whether anything was (or would be) done."""
        if self.asleep(model, [pod]) == int(asleep):
            return False
        if dry_run:
            return True
        if self._fence is not None:
            self._fence()
        base = f"http://{_address(pod, engine)}"
        started = time.monotonic()
        if engine.kind == "vllm":
            url = f"{base}/sleep?level={engine.level}" if asleep else f"{base}/wake_up"
            self._session.post(
                url, timeout=TIMEOUT_S if asleep else WAKE_TIMEOUT_S
            ).raise_for_status()
        else:
            path = "/release_memory_occupation" if asleep else "/resume_memory_occupation"
            timeout = TIMEOUT_S if asleep else WAKE_TIMEOUT_S
            self._session.post(base + path, json={}, timeout=timeout).raise_for_status()
            (self._sglang_asleep.add if asleep else self._sglang_asleep.discard)(_uid(pod))
        took = time.monotonic() - started
        _log.info("engine of pod %s (%s): %s in %.2f s", _name(pod), model,
                  "asleep" if asleep else "awake", took)  # fmt: skip
        if not asleep:
            with self._lock:
                self._wakes.append(StageObservation(Stage.WAKE, str(model), took))
        return True


def _address(pod: Obj, engine: EngineSpec) -> str:
    annotations: Mapping[str, Any] = pod["metadata"].get("annotations") or {}
    address = annotations.get(ENGINE_ADDRESS_ANNOTATION)
    if address:
        return str(address)
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        raise ValueError(f"pod {_name(pod)} has no IP yet")
    return f"{ip}:{engine.port}"


def ready_pods(workload: Obj | None, pods: Sequence[Obj], namespace: str) -> list[Obj]:
    """Of ``pods``, those of ``workload`` (its selector, in ``namespace``) that are Running, Ready
    and not terminating: the replicas whose engine can be asked to sleep or wake."""
    selector = ((workload or {}).get("spec") or {}).get("selector")
    return [
        pod
        for pod in pods
        if pod["metadata"].get("namespace", namespace) == namespace
        and selector_matches(selector, pod["metadata"].get("labels") or {})
        and not pod["metadata"].get("deletionTimestamp")
        and _ready(pod)
    ]


def _ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _json(answer: requests.Response) -> Mapping[str, Any]:
    body = answer.json()
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    return body


def _uid(pod: Obj) -> str:
    return str(pod["metadata"].get("uid") or _name(pod))


def _name(pod: Obj) -> str:
    return f"{pod['metadata'].get('namespace', '')}/{pod['metadata'].get('name', '')}"
