"""Random control heads for causal evidence."""

import torch

from workbench.analyzers.causal import random_heads_like


def test_random_heads_keep_layers_and_move_to_the_nearest_layer_when_one_is_full():
    top = [(3, 0), (3, 1), (3, 2), (7, 4)]
    picks = random_heads_like(top, 4, torch.Generator().manual_seed(0), n_layers=10)
    # layer 3 has one free head (3, 3): the first draw takes it, the next two move to
    # layers 2 or 4 (distance 1), the last stays in layer 7
    assert picks[0] == (3, 3)
    assert {layer for layer, _ in picks[1:3]} <= {2, 4}
    assert picks[3][0] == 7 and picks[3] != (7, 4)
    assert len(set(picks)) == 4 and not set(picks) & set(top)
