"""The pure parts of search, shared by every storage backend: text analysis (``text``), BM25
postings in numpy (``bm25``), metadata filters (``filters``) and score fusion (``fusion``).
Nothing here touches a database; the backends in ``store/`` and the engine in ``retrieval/``
build on it."""
