"""vidret: Ray-native training and evaluation of DiffusionRet, generative text-video retrieval.

Import direction (enforced by tests/contract): ``cli -> {train, eval, data.pipeline} -> {model, diffusion,
storage, data} -> config``. Importing ``vidret`` has no side effects.
"""

__version__ = "0.1.0"
