"""Chatwright used from other libraries (optional imports: each module needs its library)."""
