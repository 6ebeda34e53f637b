"""Evaluations of chatwright's components on public data sets (retrieval: ``beir``)."""
