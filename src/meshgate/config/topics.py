"""`[tasks.topics.NAME]`: the task topics of the `/api/v1/mesh/v2` API's older body shapes
(`{"topic", "task"}` and `{"task_type", "payload"}` on `POST /enqueue`), each mapped to a target
the gateway runs: an MCP server's tool or an HTTP service's path, as the `target` of a native
enqueue. A topic not configured here is refused, never accepted and dropped."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TOPIC_NAME = r"^[A-Za-z0-9:_.-]{1,64}$"


class TopicTarget(BaseModel):
    """Where the tasks of one topic go: `server` and `tool` (the task's payload object becomes
    the tool's arguments) or `service`, `method` and `path` (the payload is the JSON body)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: str | None = None
    tool: str | None = None
    service: str | None = None
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    path: str = "/"
    max_attempts: int = Field(3, ge=1, le=100)
    deadline_s: float | None = Field(None, gt=0, le=7 * 86400)

    @model_validator(mode="after")
    def _one_target(self) -> TopicTarget:
        tool = self.server is not None or self.tool is not None
        if tool and self.service is not None:
            raise ValueError("give server and tool (an MCP tool) or service, not both")
        if tool and (self.server is None or self.tool is None):
            raise ValueError("server and tool go together")
        if not tool and self.service is None:
            raise ValueError("give server and tool (an MCP tool) or service (an HTTP service)")
        if not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        return self

    @property
    def is_tool(self) -> bool:
        return self.service is None

    def target(self, payload: Any) -> dict[str, Any]:
        """The native enqueue `target` carrying one task's payload."""
        if self.service is not None:
            return {
                "service": self.service,
                "method": self.method,
                "path": self.path,
                "body": payload,
            }
        return {"server": self.server, "tool": self.tool, "arguments": payload}


class TaskSettings(BaseModel):
    """`[tasks]`: the topics of the older enqueue shapes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topics: dict[str, TopicTarget] = Field(default_factory=dict)

    @field_validator("topics")
    @classmethod
    def _names(cls, value: dict[str, TopicTarget]) -> dict[str, TopicTarget]:
        bad = [n for n in value if not re.fullmatch(TOPIC_NAME, n)]
        if bad:
            raise ValueError(
                f"topic names are 1 to 64 of A-Z a-z 0-9 : _ . - ; not {', '.join(map(repr, bad))}"
            )
        return value
