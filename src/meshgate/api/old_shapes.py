"""The body shapes of the older `/api/v1/mesh/v2` API (docs/api.md, "The older mesh API"):
each one told apart from meshgate's own by its keys, checked, turned into meshgate's request,
and its answer turned back into the shape the older client reads.

A request in the older shape runs exactly as its meshgate form does (the same admission, policy,
limits, audit and errors); only the bodies differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from meshgate.config import SERVICE_NAME, Registration
from meshgate.config.topics import TOPIC_NAME, TaskSettings, TopicTarget
from meshgate.errors import InvalidArguments, UnknownService

M = TypeVar("M", bound=BaseModel)

PRIORITIES = {"low": -100, "normal": 0, "high": 100}
"""The words an older `task_type` body may give as its priority, as meshgate's numbers."""


def validated(model: type[M], body: Any, what: str) -> M:
    """`body` as `model`, or InvalidArguments (422) naming each field that is wrong."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        errors = [{"loc": list(x.get("loc", ())), "msg": x.get("msg", "")} for x in e.errors()]
        raise InvalidArguments(what, extra={"errors": errors}) from None


def _refused(what: str, loc: list[str | int], msg: str) -> InvalidArguments:
    return InvalidArguments(f"{what}: {msg}", extra={"errors": [{"loc": loc, "msg": msg}]})


# -- registration --------------------------------------------------------------------------------


class OldRegistration(BaseModel):
    """`POST /register` of the older API: a service instance at `address`:`port`."""

    model_config = ConfigDict(extra="ignore")  # as the older API did

    service_name: str = Field(pattern=SERVICE_NAME)
    service_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    address: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    tags: list[str] = Field(default_factory=list, max_length=32)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("address")
    @classmethod
    def _host(cls, value: str) -> str:
        if any(c in value for c in "/@?#\\ \t") or "://" in value:
            raise ValueError("must be a host name or an IP address, without scheme, port or path")
        return value


def is_old_registration(body: dict[str, Any]) -> bool:
    return "service_name" in body


def registration(body: dict[str, Any]) -> Registration:
    """An older registration as meshgate's: `service_id` is the instance id, `metadata.weight`
    the weight. Its check is a TCP connect (services of the older mesh were not asked to
    serve a health endpoint), or `GET metadata.health_check_path` where the client names one."""
    old = validated(OldRegistration, body, "invalid registration")
    weight = old.metadata.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000:
        raise _refused("invalid registration", ["metadata", "weight"], "must be 1 to 1000")
    path = old.metadata.get("health_check_path")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise _refused(
            "invalid registration", ["metadata", "health_check_path"], "must start with '/'"
        )
    check = {"type": "tcp"} if path is None else {"type": "http", "path": path}
    native = {
        "name": old.service_name,
        "id": old.service_id,
        "address": old.address.strip("[]"),
        "port": old.port,
        "tags": old.tags,
        "metadata": old.metadata,
        "weight": weight,
        "check": check,
    }
    return validated(Registration, native, "invalid registration")


def registered(service: str, instance_id: str) -> dict[str, Any]:
    return {
        "service_id": instance_id,
        "status": "registered",
        "message": f"service {service} registered as {instance_id}",
    }


def host_port(url: str | None) -> tuple[str | None, int | None]:
    """(host, port) of an instance's URL, the port its scheme implies when it names none."""
    if not url:
        return None, None
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return parts.hostname, None
    return parts.hostname, port


def address(url: str | None) -> str | None:
    """An instance's `host:port`, as the older `/discover` shows it."""
    host, port = host_port(url)
    if host is None:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listed_instances(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The older `GET /services` entries: one per HTTP service instance of these views."""
    out = []
    for view in items:
        if view["kind"] != "http":
            continue
        for inst in view["instances"]:
            host, port = host_port(inst.get("url"))
            out.append(
                {
                    "name": view["name"],
                    "id": inst["id"],
                    "address": host,
                    "port": port,
                    "state": inst["state"],
                    "tags": inst.get("tags") or [],
                    "metadata": inst.get("metadata") or {},
                    "url": inst.get("url"),
                }
            )
    return out


# -- tasks ---------------------------------------------------------------------------------------


class OldTopicTask(BaseModel):
    """`POST /enqueue` of the older API: `{"topic", "task"}`."""

    model_config = ConfigDict(extra="ignore")  # as the older API did

    topic: str = Field(pattern=TOPIC_NAME)
    task: dict[str, Any]


class OldTypedTask(BaseModel):
    """`POST /enqueue` as some older scripts send it: `{"task_type", "payload", "priority"}`."""

    model_config = ConfigDict(extra="ignore")  # as the older API did

    task_type: str = Field(pattern=TOPIC_NAME)
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: int | Literal["low", "normal", "high"] = 0

    @field_validator("priority")
    @classmethod
    def _range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not -1000 <= value <= 1000:
            raise ValueError("must be -1000 to 1000, or low, normal or high")
        return value


@dataclass(frozen=True)
class OldTask:
    """An older enqueue made native: meshgate's body, the topic, and the answer's shape."""

    body: dict[str, Any]
    topic: str
    reply: Callable[[str], dict[str, Any]]

    @property
    def owner(self) -> str:
        """What the queue files the task under, so `GET /results` finds the topic's tasks."""
        return topic_owner(self.topic)


def topic_owner(topic: str) -> str:
    return f"topic:{topic}"


def is_old_task(body: dict[str, Any]) -> bool:
    return "topic" in body or "task_type" in body


def topic_target(tasks: TaskSettings, name: str, field: str) -> TopicTarget:
    """The configured topic, or InvalidArguments (422) naming the topics there are."""
    topic = tasks.topics.get(name)
    if topic is None:
        known = sorted(tasks.topics)
        raise InvalidArguments(
            f"unknown {field} {name!r}; known: {', '.join(known) if known else 'none'} "
            "(configured in [tasks.topics.NAME])",
            extra={
                "errors": [{"loc": [field], "msg": "not a configured topic"}],
                "known_topics": known,
            },
        )
    return topic


def old_task(body: dict[str, Any], tasks: TaskSettings) -> OldTask:
    """An older enqueue body as meshgate's, for the topic's configured target."""
    if "topic" in body:
        by_topic = validated(OldTopicTask, body, "invalid task")
        name, payload, priority = by_topic.topic, by_topic.task, 0
        field = "topic"

        def reply(task_id: str) -> dict[str, Any]:
            return {"id": task_id, "message": f"task enqueued for topic {name}"}

    else:
        typed = validated(OldTypedTask, body, "invalid task")
        name, payload, field = typed.task_type, typed.payload, "task_type"
        p = typed.priority
        priority = PRIORITIES[p] if isinstance(p, str) else p

        def reply(task_id: str) -> dict[str, Any]:
            return {"task_id": task_id}

    topic = topic_target(tasks, name, field)
    native: dict[str, Any] = {
        "target": topic.target(payload),
        "priority": priority,
        "max_attempts": topic.max_attempts,
    }
    if topic.deadline_s is not None:
        native["deadline_s"] = topic.deadline_s
    return OldTask(native, name, reply)


def unknown_service(name: str) -> UnknownService:
    return UnknownService(f"no service named {name!r}")
