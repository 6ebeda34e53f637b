"""The search index's tables. The store owns every table's migration (``store/migrations.py``,
``m003_search_index``); this is the same function under the name the engine's callers use, for
a connection that holds only the index (evaluations, tests)."""

from __future__ import annotations

from chatwright.store.migrations import m003_search_index as m003_retrieval

__all__ = ["m003_retrieval"]
