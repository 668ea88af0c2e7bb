"""Strict config loading: unknown keys, wrong types, overrides, redaction, every shipped config."""

from pathlib import Path

import pytest
import yaml

from vidret.config import (
    Config,
    TrainConfig,
    config_from_dict,
    dump_yaml,
    load_config,
    parse_override,
    to_dict,
)

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # round trip: the dumped resolved config loads back to the same value
    again = config_from_dict(yaml.safe_load(dump_yaml(cfg)), "dump")
    assert again == cfg


def test_defaults_without_file() -> None:
    cfg = load_config(None)
    assert cfg.train.lr == 1e-4
    assert cfg.diffusion.steps == 50
    assert cfg.data.max_frames == 12


def test_scientific_notation_is_a_float_in_files_and_overrides(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "train:\n  lr: 1e-4\n  coef_lr: 2E-3\n"), ["train.weight_decay=5e-2"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.coef_lr == pytest.approx(2e-3)
    assert cfg.train.weight_decay == pytest.approx(0.05)


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    p = _write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ValueError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "train.lrr" in msg
    assert "known key" in msg


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"trian"):
        load_config(_write(tmp_path, "trian:\n  lr: 0.1\n"))


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("train:\n  epochs: five\n", "train.epochs", "int"),
        ("train:\n  epochs: 2.5\n", "train.epochs", "int"),
        ("train:\n  bf16: 1\n", "train.bf16", "bool"),
        ("train:\n  lr: true\n", "train.lr", "float"),
        ("model:\n  preset: ViT-H-14\n", "model.preset", "one of"),
        ("eval:\n  splits: test\n", "eval.splits", "a list of str"),
        ("train: 3\n", "train", "a mapping"),
    ],
)
def test_wrong_type_names_file_key_and_expected_type(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(ValueError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg
    assert key in msg
    assert expected in msg


def test_int_is_accepted_for_float_but_not_bool() -> None:
    cfg = config_from_dict({"train": {"lr": 1}})
    assert isinstance(cfg.train.lr, float)
    assert cfg.train.lr == 1.0


def test_value_checks_in_post_init(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"synth\.videos.*> 0.*-3"):
        load_config(None, ["synth.videos=-3"])
    with pytest.raises(ValueError, match=r"train\.batch_size.*multiple of train\.num_workers"):
        load_config(None, ["train.batch_size=10", "train.num_workers=4"])


def test_overrides_apply_in_order_and_parse_yaml_scalars(tmp_path: Path) -> None:
    p = _write(tmp_path, "train:\n  lr: 0.1\n  epochs: 3\n")
    cfg = load_config(p, ["train.lr=0.2", "train.lr=0.3", "eval.splits=[test, ood]", "model.weights=null"])
    assert cfg.train.lr == 0.3
    assert cfg.train.epochs == 3
    assert cfg.eval.splits == ("test", "ood")
    assert cfg.model.weights is None


@pytest.mark.parametrize("bad", ["train.lr", "=3", "train.lr=[1,"])
def test_malformed_override(bad: str) -> None:
    with pytest.raises(ValueError, match="override"):
        load_config(None, [bad])


def test_override_unknown_key_is_named() -> None:
    with pytest.raises(ValueError, match=r"\(override\).*train\.nope"):
        load_config(None, ["train.nope=1"])


def test_parse_override() -> None:
    assert parse_override("a.b=1e-4") == ("a.b", 1e-4)
    assert parse_override("a.b=s3://x/y") == ("a.b", "s3://x/y")
    assert parse_override("a.b=") == ("a.b", "")


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mapping at the top level"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [1,\n"))


def test_configs_are_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(AttributeError):
        cfg.train.lr = 3.0  # type: ignore[misc]
    assert TrainConfig().epochs == 5


def test_secrets_are_redacted_when_dumped() -> None:
    cfg = load_config(None, ["storage.secret_access_key=TOPSECRET-123", "storage.access_key_id=AKIDXYZ"])
    assert cfg.storage.secret_access_key == "TOPSECRET-123"
    text = dump_yaml(cfg)
    assert "TOPSECRET-123" not in text
    assert "AKIDXYZ" not in text
    assert to_dict(cfg)["storage"]["secret_access_key"] == "***"
    assert to_dict(cfg, redact=False)["storage"]["secret_access_key"] == "TOPSECRET-123"


def test_secrets_absent_from_repr() -> None:
    cfg = load_config(None, ["storage.secret_access_key=TOPSECRET-456", "storage.session_token=TOK-789"])
    assert "TOPSECRET-456" not in repr(cfg)
    assert "TOK-789" not in repr(cfg)


def test_with_absolute_paths_resolves_only_local_relative_paths(tmp_path: Path) -> None:
    from vidret.config import with_absolute_paths

    cfg = load_config(
        None,
        [
            "run.out=runs/x",
            "data.manifest=s3://bucket/m",
            "train.storage_path=/abs/ray",
            "model.weights=file://w.pt",
            "eval.checkpoint=ck",
        ],
    )
    out = with_absolute_paths(cfg, cwd=str(tmp_path))
    assert out.run.out == str(tmp_path / "runs/x")
    assert out.eval.checkpoint == str(tmp_path / "ck")
    assert out.data.manifest == "s3://bucket/m"
    assert out.train.storage_path == "/abs/ray"
    assert out.model.weights == "file://w.pt"
    assert with_absolute_paths(out, cwd="/elsewhere") == out  # idempotent
