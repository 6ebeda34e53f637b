"""Generation: run the model over a request and gather what it streams into a message.

The tools issue grows this into the bounded generate-with-tools loop; the bot sees the same
events either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from chatwright.errors import ModelResponseError
from chatwright.models.base import Model, ModelRequest
from chatwright.types import Done, Message, TextDelta, ToolCallEvent, ToolCallPart, Usage

__all__ = ["Generation", "generate"]


@dataclass
class Generation:
    """What one model call produced so far (also when it was cut short)."""

    text: list[str] = field(default_factory=list)
    tool_calls: list[ToolCallPart] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish: str | None = None

    def message(self, **metadata: object) -> Message:
        return Message.assistant("".join(self.text), tool_calls=self.tool_calls, **metadata)


async def generate(
    model: Model, request: ModelRequest, into: Generation
) -> AsyncIterator[TextDelta | ToolCallEvent]:
    """Stream ``model``'s answer to ``request``, recording it in ``into`` as it comes."""
    async for event in model.stream(request):
        if isinstance(event, TextDelta):
            if event.text:
                into.text.append(event.text)
                yield event
        elif isinstance(event, ToolCallEvent):
            into.tool_calls.append(event.call)
            yield event
        elif isinstance(event, Usage):
            into.usage = event
        elif isinstance(event, Done):
            into.finish = event.reason
        else:
            raise ModelResponseError(f"{model.name} sent an unknown event {event!r}")
