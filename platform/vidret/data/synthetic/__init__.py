"""The generated captioned video corpus (``vidret synth``): plan (content and captions), render (frames and
H.264 encoding), corpus (splits, annotation files, the driver). :func:`generate_corpus` is the entry point."""

from __future__ import annotations

from vidret.data.synthetic.corpus import frame_count, generate_corpus, plan_corpus, split_sizes

__all__ = ["frame_count", "generate_corpus", "plan_corpus", "split_sizes"]
