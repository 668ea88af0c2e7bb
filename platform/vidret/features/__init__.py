"""Features of captions and videos under a frozen encoder: typed feature sets, encoding, the feature cache.

* ``types``: ``TextFeatures``, ``VideoFeatures`` and ``FeatureSet`` (one split of both).
* ``encode``: ``encode_batches``, decoded / tokenised batches -> typed features.
* ``store``: the cache's shard format (write, validate, load a split).
* ``build``: ``build_feature_cache``, Ray Data batch inference over every split a run needs.
* ``scoring``: similarity, the direction-parameterised re-rank entry point and ``evaluate_features``.

Layer: above ``model``, ``diffusion``, ``data`` and ``data.pipeline``; below ``train``, ``eval`` and ``tune``,
which share features only through here.
"""

from vidret.features.types import FeatureSet, TextFeatures, VideoFeatures

__all__ = ["FeatureSet", "TextFeatures", "VideoFeatures"]
