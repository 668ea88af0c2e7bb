"""Loading CLIP weights: OpenAI state dicts and TorchScript archives, open_clip checkpoints, refusals."""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from vidret.config import ModelConfig
from vidret.model.clip import load_clip_weights, read_clip_weights, uses_quick_gelu
from vidret.model.presets import build_clip


def _outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    image = torch.randn(2, 3, 32, 32, generator=g)
    text = torch.randint(1, 49000, (2, 77), generator=g)
    text[:, 0], text[:, 10], text[:, 11:] = 49406, 49407, 0
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(text)


def _assert_same_outputs(a, b) -> None:
    for x, y in zip(_outputs(a), _outputs(b), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def _openai_state(model) -> dict[str, torch.Tensor]:
    # For ViT CLIPs open_clip's key names are OpenAI's; OpenAI's file adds three bookkeeping buffers.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.update(
        input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408)
    )
    return state


def test_openai_state_dict_loads_with_identical_outputs_and_quick_gelu(tmp_path: Path, debug_clip):
    path = tmp_path / "openai.pt"
    torch.save(_openai_state(debug_clip), path)
    weights = read_clip_weights(str(path))
    assert weights.format == "openai"
    assert "input_resolution" not in weights.state_dict
    torch.manual_seed(99)
    loaded = build_clip(ModelConfig(preset="debug", weights=str(path), quick_gelu=None)).eval()
    assert uses_quick_gelu(loaded)
    _assert_same_outputs(loaded, debug_clip)


def test_openai_format_forces_quick_gelu_even_for_a_gelu_preset(tmp_path: Path):
    torch.manual_seed(0)
    src = build_clip(ModelConfig(preset="debug", quick_gelu=False))
    assert not uses_quick_gelu(src)
    path = tmp_path / "openai.pt"
    torch.save(_openai_state(src), path)
    assert uses_quick_gelu(build_clip(ModelConfig(preset="debug", weights=str(path), quick_gelu=None)))
    # An open_clip checkpoint keeps the preset's activation, and the explicit setting always wins.
    path2 = tmp_path / "oc.pt"
    torch.save(src.state_dict(), path2)
    assert not uses_quick_gelu(build_clip(ModelConfig(preset="debug", weights=str(path2), quick_gelu=False)))
    with pytest.warns(UserWarning, match="QuickGELU"):
        build_clip(ModelConfig(preset="debug", weights=str(path), quick_gelu=False))


def test_torchscript_archive_loads_state_only(tmp_path: Path, debug_clip):
    """A traced model saved with torch.jit.save, like OpenAI's released .pt files."""
    traced_src = build_clip(ModelConfig(preset="debug")).eval()
    traced_src.load_state_dict(debug_clip.state_dict())
    traced_src.register_buffer("input_resolution", torch.tensor(32))
    image, text = torch.zeros(1, 3, 32, 32), torch.zeros(1, 77, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation and tracer warnings
        traced = torch.jit.trace(traced_src, (image, text), check_trace=False)
        torch.jit.save(traced, str(tmp_path / "ViT-debug.pt"))
    uri = str(tmp_path / "ViT-debug.pt")
    assert read_clip_weights(uri).format == "openai"
    fresh = build_clip(ModelConfig(preset="debug", weights=uri)).eval()
    _assert_same_outputs(fresh, debug_clip)
    with pytest.raises(ValueError, match="TorchScript"):
        read_clip_weights(uri, "open_clip")


def test_open_clip_checkpoint_nested_with_module_prefix(tmp_path: Path, debug_clip):
    path = tmp_path / "epoch_1.pt"
    ckpt = {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in debug_clip.state_dict().items()}}
    torch.save(ckpt, path)
    assert read_clip_weights(f"file://{path}").format == "open_clip"
    fresh = build_clip(ModelConfig(preset="debug"))
    load_clip_weights(fresh, f"file://{path}", "open_clip")
    _assert_same_outputs(fresh.eval(), debug_clip)


def test_mismatched_architecture_lists_keys_and_shapes(tmp_path: Path, debug_clip):
    state = dict(debug_clip.state_dict())
    del state["ln_final.weight"]
    state["visual.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing keys") as err:
        load_clip_weights(build_clip(ModelConfig(preset="debug")), str(path))
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys (1): ln_final.weight" in msg
    assert "unexpected keys (1): visual.extra.weight" in msg
    torch.save(debug_clip.state_dict(), path)
    with pytest.raises(
        ValueError, match=r"shape mismatches .*text_projection: checkpoint \(64, 64\) vs model"
    ):
        build_clip(ModelConfig(preset="tiny", weights=str(path)))


class _Evil:
    def __reduce__(self):
        return (os.makedirs, (os.environ["VIDRET_EVIL_DIR"],))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch_save", "raw_pickle"])
def test_pickle_that_runs_code_is_refused(tmp_path: Path, monkeypatch, writer: str):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("VIDRET_EVIL_DIR", str(marker))
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": torch.zeros(1)}, "x": _Evil()}
    if writer == "torch_save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match=r"evil\.pt"):
        read_clip_weights(str(path))
    assert not marker.exists()


def test_missing_or_garbage_file_names_the_uri(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        build_clip(ModelConfig(preset="debug", weights=str(tmp_path / "nope.pt")))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match=r"garbage\.pt"):
        read_clip_weights(str(garbage))
    notdict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(ValueError, match="expected a state dict"):
        read_clip_weights(str(notdict))


class _DictStorage:
    """Duck-typed stand-in for vidret.storage.Storage (read_bytes/exists) over an in-memory dict."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.reads: list[str] = []

    def exists(self, uri: str) -> bool:
        return uri in self.objects

    def read_bytes(self, uri: str) -> bytes:
        self.reads.append(uri)
        return self.objects[uri]


def test_weights_are_read_through_the_given_storage(debug_clip):
    buf = io.BytesIO()
    torch.save(_openai_state(debug_clip), buf)
    storage = _DictStorage({"s3://bucket/clip/ViT-debug.pt": buf.getvalue()})
    cfg = ModelConfig(preset="debug", weights="s3://bucket/clip/ViT-debug.pt")
    model = build_clip(cfg, storage=storage).eval()  # type: ignore[arg-type]
    assert storage.reads == ["s3://bucket/clip/ViT-debug.pt"]
    _assert_same_outputs(model, debug_clip)
    with pytest.raises(FileNotFoundError, match=r"s3://bucket/clip/other\.pt"):
        read_clip_weights("s3://bucket/clip/other.pt", storage=storage)  # type: ignore[arg-type]


@pytest.mark.s3
def test_weights_load_from_s3_through_storage(s3_bucket, debug_clip):
    from vidret.storage import Storage

    storage_cfg, bucket = s3_bucket
    storage = Storage(storage_cfg)
    buf = io.BytesIO()
    torch.save(_openai_state(debug_clip), buf)
    uri = f"{bucket}/weights/ViT-debug.pt"
    storage.write_bytes(uri, buf.getvalue())
    model = build_clip(ModelConfig(preset="debug", weights=uri), storage).eval()
    assert uses_quick_gelu(model)
    _assert_same_outputs(model, debug_clip)
    with pytest.raises(FileNotFoundError, match=f"{bucket}/weights/missing.pt"):
        build_clip(ModelConfig(preset="debug", weights=f"{bucket}/weights/missing.pt"), storage)
