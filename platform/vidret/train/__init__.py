"""Two-stage training: losses (with an injected ``gather``), the Ray Train worker loop, optimiser,
checkpoints.

``torch.distributed`` is imported only by ``vidret.train.distributed``; models and losses receive collectives
as plain callables.
"""
