"""Ray Tune sweeps on the validation split: re-ranking parameters (inference) or stage-2 learning rates
(training trials, which run the training entry point they are given).

* ``space``: the search space, overrides and trial configs (pure).
* ``sweep``: ``run_tune``, the trials and the result tables.
"""
