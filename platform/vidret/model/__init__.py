"""Stage-1 model core: CLIP backbone (``clip``), presets and builder (``presets``), temporal module
(``temporal``) and token-wise weighted interaction (``similarity``). Single-process PyTorch only.

Import the submodules directly (``from vidret.model.clip import ClipBackbone``); this package imports nothing.
"""
