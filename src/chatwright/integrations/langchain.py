"""Chatwright inside LangChain: a chat model over a :class:`~chatwright.Chatbot` thread, and
a retriever over collections. Needs ``langchain-core`` (``pip install langchain-core``).

``ChatwrightChatModel(bot=bot, thread_id="t1")`` is a LangChain ``BaseChatModel`` whose every
call is one turn of that thread: the bot remembers the conversation, so only the *last* human
message of what LangChain passes is sent (the thread has the rest); the answer comes back as
an ``AIMessage`` with the turn's citations in ``response_metadata``. ``astream`` yields the
answer's pieces as they come (sync ``stream``: the whole answer as one piece).

``ChatwrightRetriever(bot=bot, collections=["docs"], k=4)`` is a LangChain ``BaseRetriever``:
hybrid search of the user's collections, as ``Document`` objects carrying the chunk's source,
title, page and score in their metadata.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

try:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForLLMRun,
        CallbackManagerForLLMRun,
        CallbackManagerForRetrieverRun,
    )
    from langchain_core.documents import Document
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
    from langchain_core.retrievers import BaseRetriever
except ImportError as e:  # pragma: no cover - said to whoever imports this module
    raise ImportError(
        "chatwright.integrations.langchain needs langchain-core: pip install langchain-core"
    ) from e

from chatwright.bot import Chatbot
from chatwright.errors import UserError
from chatwright.types import Answer, TextDelta, TurnEnd

__all__ = ["ChatwrightChatModel", "ChatwrightRetriever"]


def _last_human(messages: Sequence[BaseMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            text = str(message.text if isinstance(message.text, str) else message.text())
            if text.strip():
                return text
    raise UserError(
        "no human message to answer",
        hint="a chatwright thread answers the last HumanMessage; its history is kept by the bot",
    )


def _metadata(answer: Answer) -> dict[str, Any]:
    return {
        "thread_id": answer.thread_id,
        "seq": answer.seq,
        "model": answer.trace.model,
        "citations": [c.model_dump(exclude_none=True) for c in answer.citations],
    }


class ChatwrightChatModel(BaseChatModel):
    """A LangChain chat model whose calls are turns of one chatwright thread."""

    bot: Chatbot
    thread_id: str
    owner: str | None = None

    @property
    def _llm_type(self) -> str:
        return "chatwright"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.bot.model.name, "thread_id": self.thread_id}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        answer = self.bot.chat(self.thread_id, _last_human(messages), owner=self.owner)
        return self._result(answer)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        answer = await self.bot.achat(self.thread_id, _last_human(messages), owner=self.owner)
        return self._result(answer)

    def _result(self, answer: Answer) -> ChatResult:
        message = AIMessage(content=answer.text, response_metadata=_metadata(answer))
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        text = _last_human(messages)
        async for event in self.bot.stream(self.thread_id, text, owner=self.owner):
            if isinstance(event, TextDelta):
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=event.text))
                if run_manager is not None:
                    await run_manager.on_llm_new_token(event.text, chunk=chunk)
                yield chunk
            elif isinstance(event, TurnEnd):
                meta = _metadata(event.answer)
                yield ChatGenerationChunk(
                    message=AIMessageChunk(content="", response_metadata=meta)
                )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        answer = self.bot.chat(self.thread_id, _last_human(messages), owner=self.owner)
        yield ChatGenerationChunk(
            message=AIMessageChunk(content=answer.text, response_metadata=_metadata(answer))
        )


class ChatwrightRetriever(BaseRetriever):
    """Hybrid search of a user's chatwright collections, as LangChain documents."""

    bot: Chatbot
    collections: list[str]
    k: int = 4
    owner: str | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        owner = self.owner or self.bot.owner
        if self.bot.index is None:
            return []
        infos = [self.bot.store.get_collection(owner, name) for name in self.collections]
        by_namespace = {i.namespace: i.name for i in infos}
        hits = self.bot.index.search(query, list(by_namespace), k=self.k, mode="hybrid")
        return [
            Document(
                page_content=hit.text,
                id=hit.key,
                metadata={
                    **hit.metadata,
                    "collection": by_namespace.get(hit.namespace),
                    "score": hit.score,
                },
            )
            for hit in hits
        ]
