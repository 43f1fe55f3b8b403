"""Refusal detector, bundled safety data and the Ships / Sahara measures on hand-worked cases
(no model)."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.analyzers import principal_angles, refusal, safety
from workbench.analyzers.base import AnalyzerError
from workbench.errors import WorkbenchError
from workbench.organisms import refusal as refusal_organism
from workbench.organisms import refusal_training

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "I can’t do that.",  # curly apostrophe
    "Sorry, but I won't write that.",
    "As an AI language model, I must decline.",
    "  i AM UNABLE TO provide instructions for that.",
    "That is a dangerous idea. I will not help you hurt anyone.",
]
NOT_REFUSALS = [
    "Sure! Here is a simple vegetable soup: chop onions, carrots and celery...",
    "I'm sorry to hear about your dog. Here are some tips to stop the barking.",
    "I can't wait to help! First, open the settings menu.",
    "To pick a lock you insert a tension wrench and rake the pins.",
    "A thief cannot ride a locked bike away.",  # "cannot" without the first person
    "",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_detector_flags_refusals(text):
    assert refusal.is_refusal(text)
    assert refusal.refusal_phrase(text) is not None


@pytest.mark.parametrize("text", NOT_REFUSALS)
def test_detector_passes_helpful_answers(text):
    assert not refusal.is_refusal(text)


def test_detector_window_and_first_phrase():
    late = "Here is a long helpful answer. " * 10 + "I cannot stress this enough, but I can't."
    assert refusal.is_refusal(late, window=len(late))
    assert not refusal.is_refusal(late)  # beyond the 200-character window
    assert refusal.refusal_phrase("I'm sorry, but I cannot.") == "i'm sorry"


def test_refusal_rate():
    assert refusal.refusal_rate(REFUSALS[:3] + NOT_REFUSALS[:1]) == 0.75
    assert math.isnan(refusal.refusal_rate([]))


def test_bundled_sets_sizes_and_disjoint():
    harmful, harmless = refusal.harmful_prompts(), refusal.harmless_prompts()
    pairs = refusal.training_pairs()
    assert len(harmful) >= 40 and len(harmless) >= 40
    assert len(set(harmful)) == len(harmful) and len(set(harmless)) == len(harmless)
    assert {p["label"] for p in pairs} == {"harmful", "harmless"}
    assert sum(p["label"] == "harmful" for p in pairs) >= 40
    assert sum(p["label"] == "harmless" for p in pairs) >= 40
    train = {p["prompt"] for p in pairs}
    assert not train & set(harmful) and not train & set(harmless)
    # harmful training targets are refusals, harmless ones are not
    for p in pairs:
        assert refusal.is_refusal(p["response"]) == (p["label"] == "harmful"), p


def test_collate_masks_prompt_and_padding():
    examples = [(torch.tensor([5, 6, 7, 8]), 2), (torch.tensor([9, 10, 11]), 1)]
    ids, mask, labels = refusal_training.collate(examples, pad=0)
    assert ids.tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert labels.tolist() == [[-100, -100, 7, 8], [-100, 10, 11, -100]]


def test_kl_hand_worked():
    p = torch.tensor([0.5, 0.5], dtype=torch.float64).log()
    q = torch.tensor([0.25, 0.75], dtype=torch.float64).log()
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(safety.kl_divergence(p, q)) == pytest.approx(expected, abs=1e-12)
    assert float(safety.kl_divergence(p, p)) == 0.0


def test_principal_angle_hand_worked():
    # rank-1 matrices: prompt-space singular vector is the column of weights
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # u = e1 (prompts), v = e1 (hidden)
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # u = (e1+e2)/sqrt2
    assert principal_angles.principal_angle(a, b) == pytest.approx(45.0, abs=1e-9)
    assert principal_angles.principal_angle(a, b, space="hidden") == pytest.approx(0.0, abs=1e-6)
    c = torch.tensor([[0.0, 0.0], [0.0, 3.0], [0.0, 0.0]])  # u = e2, v = e2
    assert principal_angles.principal_angle(a, c) == pytest.approx(90.0, abs=1e-9)
    assert principal_angles.principal_angle(a, c, space="hidden") == pytest.approx(90.0, abs=1e-9)
    assert principal_angles.principal_angle(a, -a) == pytest.approx(0.0, abs=1e-6)  # sign-free
    # rotation by 30 degrees in the hidden plane, a shared prompt direction
    t = math.radians(30)
    d = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    e = torch.tensor([[2 * math.cos(t), 2 * math.sin(t)], [math.cos(t), math.sin(t)]])
    assert principal_angles.principal_angle(d, e, space="hidden") == pytest.approx(30.0, abs=1e-6)
    assert principal_angles.principal_angle(d, e) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(AnalyzerError, match="sahara_space"):
        principal_angles.principal_angle(a, b, space="keys")


def test_bad_training_params_are_clear_errors():
    with pytest.raises(WorkbenchError, match="steps"):
        refusal_organism.train_refusal(None, steps=0)
    with pytest.raises(WorkbenchError, match="batch_size"):
        refusal_organism.train_refusal(None, batch_size=-1)


def test_localize_refusal_needs_prompts():
    with pytest.raises(AnalyzerError, match="non-empty"):
        refusal.localize_refusal(None, None, [], ["How do I bake bread?"])


def test_organism_defaults_fit_the_ci_budget():
    # the cold build runs in CI: a few dozen steps over a few top layers only
    assert refusal_training.DEFAULT_STEPS <= 40 and len(refusal_training.DEFAULT_TRAIN_LAYERS) <= 8
    assert refusal_organism.organism_dir().name == refusal_organism.ORGANISM_NAME
