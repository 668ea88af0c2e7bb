"""Where a run keeps its outputs under ``run.out``, and the checks made before anything is written there.

<run.out>/checkpoints/<stage>/    exported weights of a stage (``stage_uri``)
<run.out>/features/<key>/<split>/ the feature cache of the encoder with content key ``key`` (``cache_root``)
<run.out>/eval/<stage>/           metrics.json, config.yaml and the HTML report of an evaluation
<run.out>/tune/<kind>/            sweep results
"""

from __future__ import annotations

from vidret.config import Config
from vidret.model.checkpoint import META_FILE
from vidret.storage import Storage, join

PLACEHOLDER = "YOUR-BUCKET"
"""The bucket name of the shipped real-dataset configs, to be replaced by the user's."""


def check_placeholders(cfg: Config) -> None:
    """Refuse to run on the ``s3://YOUR-BUCKET`` placeholders of the shipped real-dataset configs."""
    for key, value in (
        ("run.out", cfg.run.out),
        ("data.manifest", cfg.data.manifest),
        ("train.storage_path", cfg.train.storage_path),
        ("model.weights", cfg.model.weights),
        ("train.init_checkpoint", cfg.train.init_checkpoint),
    ):
        if value and PLACEHOLDER in value:
            raise ValueError(
                f"{key} is still the placeholder {value!r}: set it to your bucket "
                f"(e.g. {key}=s3://my-bucket/...)"
            )


def stage_uri(cfg: Config, stage: str) -> str:
    """Where the selected weights of ``stage`` (discrimination or generation) are exported."""
    return join(cfg.run.out, "checkpoints", stage)


def cache_root(cfg: Config, key: str) -> str:
    """The feature cache folder of the encoder whose content key is ``key`` (one sub-folder per split)."""
    return join(cfg.run.out, "features", key)


def checkpoint_exists(uri: str, storage: Storage) -> bool:
    """True when a checkpoint's meta file is present at ``uri`` (its state is verified on load)."""
    return storage.exists(join(uri, META_FILE))
