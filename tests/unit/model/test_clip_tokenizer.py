"""ClipTokenizer: SOT/EOT placement, truncation, padding, mask, cleaning, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from vidret.data.tokenizer import EOT_ID, SOT_ID, ClipTokenizer


def test_sot_eot_padding_and_mask():
    tok = ClipTokenizer(max_words=8)
    ids, mask = tok(["a man is singing", ""])
    assert ids.dtype == np.int64
    assert mask.dtype == np.int64
    assert ids.shape == (2, 8)
    n = len(tok.encode("a man is singing"))
    assert n >= 4
    assert ids[0, 0] == SOT_ID == 49406
    assert ids[0, n + 1] == EOT_ID == 49407
    assert np.all(ids[0, n + 2 :] == 0)
    np.testing.assert_array_equal(mask[0], (np.arange(8) < n + 2).astype(np.int64))
    np.testing.assert_array_equal(ids[1, :3], [SOT_ID, EOT_ID, 0])
    np.testing.assert_array_equal(mask[1], [1, 1, 0, 0, 0, 0, 0, 0])


def test_truncation_keeps_sot_first_tokens_and_eot():
    tok = ClipTokenizer(max_words=32)
    text = " ".join(f"word{i}" for i in range(40))
    bpe = tok.encode(text)
    assert len(bpe) > 30
    ids, mask = tok([text], max_words=6)
    np.testing.assert_array_equal(ids[0], [SOT_ID, *bpe[:4], EOT_ID])
    assert mask.sum() == 6
    # Same ids as open_clip's own tokenizer at that context length.
    np.testing.assert_array_equal(ids, SimpleTokenizer()([text], context_length=6).numpy())


def test_cleaning_is_lowercase_html_and_whitespace():
    tok = ClipTokenizer()
    a, _ = tok(["A  Man &amp;amp; his   DOG "])
    b, _ = tok(["a man & his dog"])
    np.testing.assert_array_equal(a, b)


def test_bang_token_id_zero_is_masked_as_real():
    ids, mask = ClipTokenizer(max_words=6)(["!$"], return_tensors="pt")  # BPE: "!" (id 0), "$</w>"
    assert isinstance(ids, torch.Tensor)
    assert ids.dtype == torch.int64
    assert ids[0, :4].tolist() == [SOT_ID, 0, 259, EOT_ID]
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0]


def test_picklable_and_small():
    tok = ClipTokenizer(max_words=12)
    tok(["warm the cache"])
    blob = pickle.dumps(tok)
    assert len(blob) < 1000
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone(["a dog runs"])[0], tok(["a dog runs"])[0])


def test_bad_arguments_raise():
    with pytest.raises(TypeError, match="list of captions"):
        ClipTokenizer()("a single string")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_words"):
        ClipTokenizer(max_words=1)
