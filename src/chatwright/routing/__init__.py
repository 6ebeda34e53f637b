"""Collection routing: which collections (none, one or several) a turn searches."""

from chatwright.routing.profiles import ProfileCache, build_profiles, with_best_chunks
from chatwright.routing.router import (
    CHITCHAT_EXEMPLARS,
    AllRouter,
    ChitChatRouter,
    CollectionProfile,
    LlmRouter,
    Route,
    Router,
    RulesRouter,
    SemanticRouter,
    achain,
    chain,
    embed_exemplars,
    is_chitchat,
)

__all__ = [
    "CHITCHAT_EXEMPLARS",
    "AllRouter",
    "ChitChatRouter",
    "CollectionProfile",
    "LlmRouter",
    "ProfileCache",
    "Route",
    "Router",
    "RulesRouter",
    "SemanticRouter",
    "achain",
    "build_profiles",
    "chain",
    "embed_exemplars",
    "is_chitchat",
    "with_best_chunks",
]
