"""Corpora, annotations, decoding and the Ray Data pipeline."""
