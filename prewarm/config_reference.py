"""Renders the settings tree as a Markdown reference (``docs/configuration.md``).

Owns: walking the pydantic models of :class:`prewarm.settings.Settings` and writing one row per
leaf setting with its YAML path, environment variable, type, default and description. The committed
file is checked against this output by a test, so the reference cannot drift from the code.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from prewarm.settings import Settings

HEADER = """# Configuration reference

Generated from the settings models by `python -m prewarm.config_reference > docs/configuration.md`
(a test fails when this file is out of date). Settings come from the YAML file given with
`--config` (or `PREWARM_CONFIG`), overridden by environment variables: `PREWARM_` + the path in
capitals with `__` between levels. An invalid value stops start-up with one message naming the
field.

"""


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if _model_of(a) is not None]
        if len(models) == 1:
            return _model_of(models[0])
    return None


def _type_name(annotation: Any) -> str:
    text = str(annotation)
    if isinstance(annotation, type):
        text = annotation.__name__
    for noise in ("typing.", "pathlib._local.", "pathlib.", "pydantic.types.", "<class '", "'>"):
        text = text.replace(noise, "")
    return text.replace("|", "or")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, BaseModel):
        return "(section)"
    try:
        return "`" + json.dumps(value, default=str) + "`"
    except TypeError:
        return f"`{value}`"


def rows(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """(yaml path, env var, type, default, description) for every leaf setting of ``model``."""
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        nested = _model_of(field.annotation)
        if nested is not None and field.default is None and field.default_factory is None:
            yield (
                ".".join(path),
                "PREWARM_" + "__".join(p.upper() for p in path),
                f"{nested.__name__} or null",
                "`null`",
                (field.description or "").replace("|", "/"),
            )
            yield from rows(nested, path)
        elif nested is not None:
            yield from rows(nested, path)
        else:
            yield (
                ".".join(path),
                "PREWARM_" + "__".join(p.upper() for p in path),
                _type_name(field.annotation),
                _default(field),
                (field.description or "").replace("|", "/").replace("\n", " "),
            )


def render() -> str:
    """The whole reference document."""
    lines = [HEADER]
    section = None
    for path, env, kind, default, description in rows(Settings):
        top = path.split(".", 1)[0]
        if top != section:
            section = top
            lines.append(f"\n## `{top}`\n\n| setting | env | type | default | description |")
            lines.append("| --- | --- | --- | --- | --- |")
        lines.append(f"| `{path}` | `{env}` | {kind} | {default} | {description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
