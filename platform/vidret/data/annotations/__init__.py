"""Annotations: shared records and parsing (``records``), the per-dataset readers (``formats``), the custom
CSV/JSONL table (``custom``) and the Parquet manifest built from them (``manifest``)."""
