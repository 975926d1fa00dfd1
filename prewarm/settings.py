"""prewarm's one typed settings tree: a YAML file, overridden by ``PREWARM_`` environment variables.

Each library package owns the model of its own section (``forecaster.config`` and so on); this
module composes them. Precedence, highest first: explicit overrides, environment variables
(``PREWARM_FORECASTER__HORIZON_S=900``; ``__`` separates nesting levels), the YAML file, defaults.
Validation errors are turned into one :class:`common.errors.InvalidInput` naming every bad field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from actuator.config import ActuatorConfig
from common.errors import InvalidInput
from forecaster.config import ForecasterConfig
from gpu_agent.config import AgentConfig
from planner.config import PlannerConfig
from prewarm.control.config import ControlConfig
from prewarm.daemon.config import DaemonConfig


class LoggingConfig(BaseModel):
    """Log level and format of the long-running processes (``prewarm run``, ``prewarm agent``);
    ``--log-level`` and ``--log-json`` override them."""

    model_config = ConfigDict(extra="forbid")

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe level written."
    )
    json_format: bool = Field(
        default=False,
        description="One JSON object per line with every field (the Helm chart sets it); "
        "false: one human line per event.",
    )
    retry_summary_s: float = Field(
        default=60.0,
        gt=0,
        description="While an endpoint (the API server) stays unreachable, its HTTP retries are "
        "counted, not logged one by one: one summary line this often.",
    )


class Settings(BaseSettings):
    """The whole settings tree. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="PREWARM_", env_nested_delimiter="__", extra="forbid", frozen=True
    )
    _yaml_data: ClassVar[dict[str, Any]] = {}

    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    forecaster: ForecasterConfig = Field(default_factory=ForecasterConfig)
    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    actuator: ActuatorConfig = Field(default_factory=ActuatorConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))


class _YamlSource(PydanticBaseSettingsSource):
    """Feeds the YAML document read by :func:`load_settings` into pydantic-settings."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return Settings._yaml_data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(Settings._yaml_data)


def yaml_error_line(path: Path, error: yaml.YAMLError) -> str:
    """A YAML syntax error as one line, ``FILE:LINE:COLUMN: problem (context)``.

    PyYAML's own message spans several lines (it quotes the source with a caret); its marks are
    0-based, editors count from 1.
    """
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    context_mark = getattr(error, "context_mark", None)
    if context and context_mark is not None:
        context = f"{context} at {context_mark.line + 1}:{context_mark.column + 1}"
    detail = f"{problem} ({context})" if context else problem
    return f"{where}: invalid YAML: {detail}"


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; :class:`InvalidInput` names the file otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidInput(f"cannot read {path}: {error.strerror or error}") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidInput(yaml_error_line(path, error)) from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInput(
            f"{path} must hold a mapping at the top level, got {type(data).__name__}"
        )
    return data


def describe_validation_error(error: ValidationError, *, origin: str) -> str:
    """One message naming every invalid field as a dotted path, for people."""
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        problems.append(f"{location}: {item['msg']}")
    return f"invalid settings in {origin}: " + "; ".join(problems)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings tree from ``path`` (optional YAML), the environment and ``overrides``.

    Raises :class:`InvalidInput` with every bad field named, e.g.
    ``invalid settings in prewarm.yaml: forecaster.horizon_s: Input should be greater than 0``.
    """
    data = read_yaml_mapping(path) if path is not None else {}
    origin = str(path) if path is not None else "environment"
    Settings._yaml_data = data
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise InvalidInput(describe_validation_error(error, origin=origin)) from error
    finally:
        Settings._yaml_data = {}
