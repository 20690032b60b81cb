"""Pruning's parts on hand-made layers: magnitude masks, unit ranking and removal, Fisher scores, the
cubic schedule."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detect.models.pruning import (UnitLayer, UnitMasks, cubic_sparsity, lowest, magnitude_masks, remove_units,
                                 unit_layers, weight_norm_scores, weight_targets)
from detect.models.roi_head import BoxPredictor, TwoFCHead


class HeadOnly(nn.Module):
    """What unit_layers looks for in Fast / Faster R-CNN: roi_head.box_head (fc6, fc7) and its predictor."""

    def __init__(self, in_channels=2, resolution=2, fc_dim=6, classes=2):
        super().__init__()
        self.roi_head = nn.Module()
        self.roi_head.box_head = TwoFCHead(in_channels, resolution, fc_dim)
        self.roi_head.predictor = BoxPredictor(fc_dim, classes)

    def forward(self, x):
        return self.roi_head.predictor(self.roi_head.box_head(x))


def test_weight_pruning_zeroes_exactly_the_share_asked_for():
    w = torch.tensor([[0.5, -0.1, 0.3, -0.8], [0.2, 0.05, -0.6, 0.4]])
    mask = magnitude_masks({"a": w}, 0.5)["a"]
    # the four smallest magnitudes: 0.05, 0.1, 0.2, 0.3
    assert mask.tolist() == [[1, 0, 0, 1], [0, 0, 1, 1]]
    for s in (0.1, 0.25, 0.6, 0.9):
        m = magnitude_masks({"a": torch.randn(37, 11)}, s)["a"]
        assert int((m == 0).sum()) == round(s * 37 * 11)


def test_weight_pruning_count_is_exact_among_ties_and_global_scope_compares_layers():
    zeros = torch.zeros(10)
    assert int((magnitude_masks({"z": zeros}, 0.3)["z"] == 0).sum()) == 3
    small, large = torch.full((4,), 0.01), torch.arange(1.0, 5.0)
    layer = magnitude_masks({"s": small, "l": large}, 0.5, "layer")
    assert int((layer["s"] == 0).sum()) == 2 and layer["l"].tolist() == [0, 0, 1, 1]
    glob = magnitude_masks({"s": small, "l": large}, 0.5, "global")
    assert glob["s"].tolist() == [0, 0, 0, 0] and glob["l"].tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks({"s": small}, 0.5, "net")


def test_unit_pruning_removes_the_lowest_ranked_units_and_equals_the_masked_model():
    torch.manual_seed(0)
    model = HeadOnly()
    fc6 = model.roi_head.box_head.fc6
    with torch.no_grad():
        fc6.weight.copy_(torch.randn(6, 8) * torch.tensor([3.0, 0.1, 2.0, 0.2, 1.0, 0.3])[:, None])
        fc6.bias.zero_()
    units = unit_layers(model)
    assert set(units) == {"fc6", "fc7"}
    norms = weight_norm_scores(units["fc6"], 2)
    torch.testing.assert_close(norms, fc6.weight.detach().norm(dim=1).double())
    drop = lowest(norms, 3)
    assert sorted(drop.tolist()) == [1, 3, 5]  # the rows scaled by 0.1, 0.2, 0.3
    x = torch.randn(5, 2, 2, 2)
    with UnitMasks({"fc6": units["fc6"]}) as masks:
        masks.masks["fc6"][drop] = 0.0
        masked = model(x)
    remove_units(units["fc6"], torch.tensor([0, 2, 4]))
    assert fc6.out_features == 3 and model.roi_head.box_head.fc7.in_features == 3
    pruned = model(x)
    for a, b in zip(masked, pruned):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_removing_fc7_units_slices_the_class_scores_and_box_deltas():
    torch.manual_seed(1)
    model = HeadOnly(fc_dim=5)
    units = unit_layers(model)
    x = torch.randn(4, 2, 2, 2)
    with UnitMasks(units) as masks:
        masks.masks["fc7"][torch.tensor([0, 3])] = 0.0
        masked = model(x)
    remove_units(units["fc7"], torch.tensor([4, 1, 2]))  # any order
    pred = model.roi_head.predictor
    assert pred.cls_score.weight.shape == (3, 3) and pred.bbox_pred.weight.shape == (12, 3)
    for a, b in zip(masked, model(x)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="every unit of fc7"):
        remove_units(units["fc7"], torch.tensor([], dtype=torch.int64))


def test_rcnn_unit_pruning_keeps_svm_and_regressor_outputs():
    """R-CNN's fc feeds the fine-tuning classifier, the SVMs (C, D) and the regressors (C, D + 1, 4)."""
    torch.manual_seed(2)
    model = nn.Module()
    model.fc = nn.Linear(6, 4)
    model.cls_score = nn.Linear(4, 3)
    model.register_buffer("svm_weight", torch.randn(2, 4))
    model.register_buffer("bbox_weight", torch.randn(2, 5, 4))
    units = unit_layers(model)
    assert list(units) == ["fc"]
    x = torch.randn(7, 6)

    def outputs():
        f = F.relu(model.fc(x))
        return (model.cls_score(f), f @ model.svm_weight.t(),
                torch.einsum("rd,cdk->rck", torch.cat([f, torch.ones(7, 1)], 1), model.bbox_weight))

    with UnitMasks(units) as masks:
        masks.masks["fc"][torch.tensor([1])] = 0.0
        masked = outputs()
    remove_units(units["fc"], torch.tensor([0, 2, 3]))
    assert model.svm_weight.shape == (2, 3) and model.bbox_weight.shape == (2, 4, 4)
    assert "svm_weight" in dict(model.named_buffers())  # still saved with the model
    for a, b in zip(masked, outputs()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_fisher_scores_equal_the_hand_computed_sum_and_rank_the_costlier_unit_higher():
    """Two hidden units, y = w2 . relu(W1 x), L_n = 1/2 (y_n - t_n)^2, at a point where the mask's
    mean gradient is zero (a trained model): the residuals r = (-3, 1, 1) are orthogonal to both
    units' activations. The Fisher score of unit k is sum_n (a_nk dL_n/da_nk)^2 = sum_n (a_nk w2_k r_n)^2;
    the loss increase of removing it is 1/2 sum_n (a_nk w2_k)^2 (the loss is quadratic in the mask)."""
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2))
    w2 = torch.tensor([2.0, 0.5])
    x = torch.tensor([[1.0, 1.0], [1.0, 2.0], [2.0, 1.0]])  # a = x
    t = x @ w2 - torch.tensor([-3.0, 1.0, 1.0])
    unit = UnitLayer("h", "h", layer, [])
    with UnitMasks({"h": unit}, score="fisher") as masks:
        a = F.relu(layer(x))
        loss = 0.5 * ((a @ w2 - t) ** 2).sum()
        loss.backward()
    # unit 0: (1, 1, 2) * 2 * (-3, 1, 1) = (-6, 2, 4); unit 1: (1, 2, 1) * 0.5 * (-3, 1, 1) = (-1.5, 1, 0.5)
    torch.testing.assert_close(masks.scores["h"], torch.tensor([36.0 + 4 + 16, 2.25 + 1 + 0.25], dtype=torch.float64))
    assert masks.count["h"] == 3
    with torch.no_grad():
        increase = [(0.5 * ((a * keep) @ w2 - t).pow(2).sum() - loss).item()
                    for keep in (torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]))]
    assert increase == pytest.approx([12.0, 0.75])  # removing unit 0 costs more, and Fisher ranks it higher
    assert lowest(masks.mean_scores("h"), 1).tolist() == [1]


def test_cubic_schedule_by_hand():
    # s_t = s_f (1 - (1 - t)^3) at the pruning steps t = k / 10 of the first 75% of the run
    assert cubic_sparsity(0.0, 0.8) == 0.0
    assert cubic_sparsity(0.074, 0.8) == 0.0
    assert cubic_sparsity(0.075, 0.8) == pytest.approx(0.8 * (1 - 0.9 ** 3))
    assert cubic_sparsity(0.375, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert cubic_sparsity(0.7499, 0.8) == pytest.approx(0.8 * (1 - 0.1 ** 3))
    assert cubic_sparsity(0.75, 0.8) == 0.8 and cubic_sparsity(1.0, 0.8) == 0.8
    assert cubic_sparsity(0.5, 0.9, initial=0.5, end=1.0, steps=2) == pytest.approx(0.9 - 0.4 * 0.125)


def test_unknown_layer_names_list_the_prunable_ones():
    model = HeadOnly()
    assert set(weight_targets(model, ["fc6", "roi_head.predictor.cls_score"])) == {
        "roi_head.box_head.fc6", "roi_head.predictor.cls_score"}
    with pytest.raises(ValueError, match=r"no prunable layer 'fc8' in this model: prunable layers are fc6, fc7 "
                                         r"and any of its 4 Linear / Conv2d modules"):
        weight_targets(model, ["fc8"])
