"""``/api/search``, ``/api/import``, ``/api/threads/{id}/title``, ``/api/welcome``: finding,
bringing in and naming threads, and what a new page shows before the first message.

- Search ranks the user's own threads by their titles and message text with the search engine
  (BM25 over the chunk index: ``retrieval/thread_search.py``, indexed when a search asks,
  never by a turn); a search catches up only a few threads and says ``"partial": true``
  when some are not indexed yet. Another user's threads are never searched.
- Import takes exports as a multipart upload (form field ``files``), under the upload size
  limit (``max_upload_bytes``: a larger body is refused with 413 before it is read), parses
  every file and checks the limits (threads, messages, a message's length, branches) first,
  then stores the threads one transaction each, undoing them all if one fails: a malformed
  file (400) stores nothing (``importing.py``). Imported messages count as untrusted text.
- An automatic title replaces a placeholder title (the first message cut short) after the
  first answer; a title the user chose is kept (``titles.py``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile

from chatwright.importing import import_threads, parse_export
from chatwright.retrieval.thread_search import ThreadHit, thread_search
from chatwright.server.api_account import bot_json
from chatwright.server.api_threads import ThreadId, thread_json
from chatwright.server.deps import CurrentUser, State
from chatwright.server.errors import SafeJSONResponse
from chatwright.server.schemas import BODY_ERRORS, errors
from chatwright.store.base import CollectionInfo, DocumentInfo, Store
from chatwright.titles import auto_title

__all__ = ["router", "welcome_prompts"]

router = APIRouter(
    prefix="/api",
    tags=["threads"],
    default_response_class=SafeJSONResponse,
    responses=errors(401, 422, 500),
)

_GENERIC_PROMPTS = (
    "What can you help me with?",
    "Explain a hard idea in simple words",
    "Help me plan my week",
)


def hit_json(hit: ThreadHit) -> dict[str, Any]:
    return {
        "thread": thread_json(hit.thread),
        "score": round(hit.score, 4),
        "seq": hit.seq,
        "role": hit.role,
        "snippet": hit.snippet,
    }


@router.get("/search")
def search_threads(
    user: CurrentUser,
    state: State,
    q: Annotated[str, Query(min_length=1, max_length=500, description="words to look for")],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """Your threads whose title or messages match ``q`` best, one result per thread (its best
    match: ``seq`` null means the title), with a snippet. ``partial`` true: ``pending`` of
    your threads (new imports, say) are not fully indexed yet; a later search includes them."""
    found = thread_search(state.store).find(user.user, q, limit=limit)
    return {
        "query": q,
        "results": [hit_json(h) for h in found.hits],
        "partial": found.pending > 0,
        "pending": found.pending,
    }


@router.post("/import", status_code=201, responses=errors(*BODY_ERRORS))
async def import_exports(
    user: CurrentUser,
    state: State,
    files: Annotated[list[UploadFile], File(description="one or more export files (JSON)")],
) -> dict[str, Any]:
    """Import threads: chatwright exports (``GET /api/threads/{id}/export``), ChatGPT's
    ``conversations.json`` or ``{"messages": [{"role", "content"}]}``. Each becomes a new
    thread; a file that cannot be read is a 400 and nothing is stored."""
    parsed = []
    for upload in files:
        data = await upload.read()
        parsed += await asyncio.to_thread(parse_export, data)
    limit = state.default.settings.max_message_chars  # a message's longest, as in a turn
    created = await asyncio.to_thread(
        import_threads, state.store, user.user, parsed, max_chars=limit
    )
    return {"threads": [thread_json(t) for t in created]}


@router.post("/threads/{thread_id}/title", responses=errors(404))
async def make_title(
    thread_id: ThreadId,
    user: CurrentUser,
    state: State,
    bot: Annotated[str | None, Query(description="whose model writes it")] = None,
) -> dict[str, Any]:
    """Give the thread an automatic title: by the bot's model when it is a remote one, else
    from its key words. A title the user chose is kept (``changed`` false)."""
    chatbot = state.bot(bot)
    renamed = await auto_title(state.store, chatbot.model, user.user, thread_id)
    info = renamed or await asyncio.to_thread(state.store.get_thread, user.user, thread_id)
    return {"thread": thread_json(info), "changed": renamed is not None}


def _document_prompt(doc: DocumentInfo) -> str:
    name = doc.title or doc.source.rsplit("/", 1)[-1]
    return f"What does “{name[:60]}” say?"


def welcome_prompts(store: Store, owner: str, collections: list[CollectionInfo]) -> list[str]:
    """A few example prompts from the user's collections: one per document title, taken
    round-robin across collections (at most 4); generic ones when there is nothing."""
    per_collection = [store.list_documents(owner, c.name)[:4] for c in collections[:4]]
    prompts: list[str] = []
    for rank in range(4):
        for docs in per_collection:
            if rank < len(docs) and len(prompts) < 4:
                prompt = _document_prompt(docs[rank])
                if prompt not in prompts:
                    prompts.append(prompt)
    for c in collections:
        if len(prompts) < 3:
            prompts.append(f"What is in the {c.name} collection?")
    return prompts or list(_GENERIC_PROMPTS)


@router.get("/welcome", responses=errors(404))
def welcome(
    user: CurrentUser,
    state: State,
    bot: Annotated[str | None, Query(description="the bot to introduce")] = None,
) -> dict[str, Any]:
    """What the page shows before the first message: the bot, the collections it can search
    for you, and example prompts made from them."""
    name = bot or state.default_name
    chatbot = state.bot(name)
    collections = chatbot.candidate_collections(user.user)
    return {
        "bot": bot_json(name, chatbot, state),
        "collections": [
            {"name": c.name, "description": c.description, "documents": c.documents}
            for c in collections
        ],
        "prompts": welcome_prompts(state.store, user.user, collections),
    }
