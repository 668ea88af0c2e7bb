"""WTI (method 2.3) on a case small enough to compute by hand, padding included.

D=2, L=3, F=2. Features are chosen so that normalised vectors are 3-4-5 triangles; every expected number
below is worked out in the comments from the definition, not by running the code.
"""

from __future__ import annotations

import pytest
import torch

from vidret.model.similarity import masked_softmax, wti_blocked, wti_similarity

# Text a: t1=(2,0)->(1,0), t2=(0.6,0.8), t3 PADDED=(5,5) (would win several maxima if it were not masked).
# Text b: (0,1), (3,-4)->(0.6,-0.8), (1,0); all real.
TEXT = torch.tensor([[[2.0, 0.0], [0.6, 0.8], [5.0, 5.0]], [[0.0, 1.0], [3.0, -4.0], [1.0, 0.0]]])
TEXT_MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])
TEXT_W = torch.tensor([[0.25, 0.75, 0.0], [0.5, 0.25, 0.25]])
# Video 1: f1=(4,3)->(0.8,0.6), f2=(-0.6,-0.8); both real.  Video 2: f1=(-1,0), f2 PADDED=(1,0).
VIDEO = torch.tensor([[[4.0, 3.0], [-0.6, -0.8]], [[-1.0, 0.0], [1.0, 0.0]]])
VIDEO_MASK = torch.tensor([[1, 1], [1, 0]])
VIDEO_W = torch.tensor([[0.5, 0.5], [1.0, 0.0]])

# (a, v1): S = [[0.8, -0.6], [0.96, -1.0], pad]
#   t2v = 0.25*0.8 + 0.75*0.96 = 0.92
#   zero:    v2t = 0.5*max(0.8, 0.96, 0) + 0.5*max(-0.6, -1.0, 0) = 0.48        -> sim 0.70
#   neg_inf: v2t = 0.5*0.96 + 0.5*(-0.6) = 0.18                                -> sim 0.55
# (a, v2): real S = [[-1], [-0.6]]
#   zero:    every max also sees a padded 0 -> t2v = v2t = 0                    -> sim 0
#   neg_inf: t2v = 0.25*(-1) + 0.75*(-0.6) = -0.70; v2t = 1*max(-1, -0.6) = -0.6 -> sim -0.65
# (b, v1): S = [[0.6, -0.8], [0, 0.28], [0.8, -0.6]]
#   t2v = 0.5*0.6 + 0.25*0.28 + 0.25*0.8 = 0.57; v2t = 0.5*0.8 + 0.5*0.28 = 0.54 -> sim 0.555 (both modes)
# (b, v2): real S = [[0], [-0.6], [-1]]
#   zero:    t2v = 0 (padded 0 in each row); v2t = max(0, -0.6, -1) = 0         -> sim 0
#   neg_inf: t2v = 0.5*0 + 0.25*(-0.6) + 0.25*(-1) = -0.4; v2t = 0               -> sim -0.2
EXPECTED = {
    "zero": [[0.70, 0.0], [0.555, 0.0]],
    "neg_inf": [[0.55, -0.65], [0.555, -0.2]],
}


@pytest.mark.parametrize("padding", ["zero", "neg_inf"])
def test_wti_hand_computed(padding: str):
    sim = wti_similarity(TEXT, TEXT_MASK, VIDEO, VIDEO_MASK, TEXT_W, VIDEO_W, padding=padding)
    torch.testing.assert_close(sim, torch.tensor(EXPECTED[padding]), rtol=0, atol=1e-6)
    blocked = wti_blocked(
        TEXT, TEXT_MASK, VIDEO, VIDEO_MASK, TEXT_W, VIDEO_W, padding=padding, block_q=1, block_n=1
    )
    torch.testing.assert_close(blocked, torch.tensor(EXPECTED[padding]), rtol=0, atol=1e-6)


def test_masked_softmax_hand_computed():
    # softmax([1, 2]) = [1/(1+e), e/(1+e)] = [0.2689414, 0.7310586]; the padded entry gets exactly 0.
    w = masked_softmax(torch.tensor([[1.0, 2.0, 50.0]]), torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(w, torch.tensor([[0.2689414, 0.7310586, 0.0]]), rtol=0, atol=1e-6)
