"""Text-to-video search over a library of videos with a trained model.

``build`` (``vidret index``: Ray Data batch inference into an index), ``layout`` (its files), ``ann`` (pooled
embeddings and the faiss prefilter), ``query`` (prefilter -> exact WTI -> optional diffusion re-rank),
``service`` and ``page`` (``vidret serve``: Ray Serve with a FastAPI ingress and a web page), ``inputs``
(manifests and video-only tables) and ``model_io`` (the one doorway to the model code).
"""
