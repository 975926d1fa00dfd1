"""Label selectors as Kubernetes reads them, for finding a workload's pods.

Owns :func:`selector_matches`. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def selector_matches(selector: Any, labels: Mapping[str, str]) -> bool:
    """Whether a workload's ``spec.selector`` selects a pod with ``labels``.

    A LabelSelector (``matchLabels``, ``matchExpressions`` with In, NotIn, Exists, DoesNotExist)
    or a plain map (read as ``matchLabels``). An empty or missing selector selects nothing here:
    Kubernetes would read it as "every pod", which would make every pod of the namespace a replica.
    """
    if not isinstance(selector, Mapping):
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        match_labels = selector.get("matchLabels") or {}
        expressions: Iterable[Mapping[str, Any]] = selector.get("matchExpressions") or []
    else:
        match_labels, expressions = selector, []
    if not match_labels and not expressions:
        return False
    if any(labels.get(key) != value for key, value in match_labels.items()):
        return False
    for expression in expressions:
        key, operator = str(expression.get("key")), expression.get("operator")
        values = list(expression.get("values") or [])
        if operator == "In":
            ok = key in labels and labels[key] in values
        elif operator == "NotIn":
            ok = labels.get(key) not in values
        elif operator == "Exists":
            ok = key in labels
        elif operator == "DoesNotExist":
            ok = key not in labels
        else:  # an operator this reader does not know: select nothing rather than guess
            return False
        if not ok:
            return False
    return True
