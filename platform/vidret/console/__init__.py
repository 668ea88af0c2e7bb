"""vidret's console: quiet libraries and one-line messages (:mod:`.logs`), progress with an ETA
(:mod:`.progress`). The end-of-run summary is :func:`vidret.tracking.finish_run`."""
