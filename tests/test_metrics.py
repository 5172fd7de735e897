import math

import numpy as np
import pytest
import torch

from lift_dist.errors import DataError
from lift_dist.metrics import MetricAccumulator, classification_metrics

# train counts → groups: head 0, 1, 6 (>100); medium 2, 3 (20..100); tail 4, 5 (<20)
TRAIN = [500, 150, 50, 30, 10, 5, 200]
#          class:  0  0  0  0  1  1  2  3  3  4  5  5     (class 6 absent from eval)
LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 4, 5, 5])
PREDS = np.array([0, 0, 0, 1, 1, 0, 2, 2, 0, 6, 5, 5])
# per class: 3/4, 1/2, 1/1, 0/2, 0/1, 2/2, absent


def test_hand_built_example():
    m = classification_metrics(PREDS, LABELS, TRAIN)
    assert m["overall"] == pytest.approx(7 / 12)
    assert m["mean_class"] == pytest.approx((0.75 + 0.5 + 1 + 0 + 0 + 1) / 6)
    assert m["head"] == pytest.approx((0.75 + 0.5) / 2)  # class 6 (head, absent) is not counted
    assert m["medium"] == pytest.approx(0.5)
    assert m["tail"] == pytest.approx(0.5)
    np.testing.assert_allclose(m["per_class"][:6], [0.75, 0.5, 1.0, 0.0, 0.0, 1.0])
    assert math.isnan(m["per_class"][6])
    assert m["per_class_count"].tolist() == [4, 2, 1, 2, 1, 2, 0]
    assert m["per_class_correct"].tolist() == [3, 1, 1, 0, 0, 2, 0]
    assert m["group_classes"] == {"head": 2, "medium": 2, "tail": 2}
    assert m["num_samples"] == 12


def test_empty_group_is_nan_and_thresholds():
    # counts 101 → head, 100 and 20 → medium; no tail class at all (like CIFAR-100-IR10 in LIFT+)
    m = classification_metrics([0, 1, 2], [0, 1, 1], [101, 100, 20])
    assert m["head"] == 1.0 and m["medium"] == 0.5 and math.isnan(m["tail"])
    m = classification_metrics([0], [0], [19, 5])  # tail class 1 exists in train but not in eval
    assert m["tail"] == 1.0 and math.isnan(m["head"]) and math.isnan(m["medium"])
    assert math.isnan(classification_metrics([], [], [3])["overall"])


def test_accumulator_streams_and_reduces_by_sum():
    acc = MetricAccumulator(7)
    acc.update(torch.tensor(PREDS[:5]), torch.tensor(LABELS[:5]))
    acc.update(PREDS[5:], LABELS[5:])
    assert acc.correct.dtype == torch.int64 and acc.total.dtype == torch.int64
    ref = classification_metrics(PREDS, LABELS, TRAIN)
    got = acc.compute(torch.tensor(TRAIN))
    for k in ("overall", "mean_class", "head", "medium", "tail"):
        assert got[k] == pytest.approx(ref[k])
    # two "ranks" with disjoint shards: summing their two tensors gives the same result
    a, b = MetricAccumulator(7), MetricAccumulator(7)
    a.update(PREDS[::2], LABELS[::2])
    b.update(PREDS[1::2], LABELS[1::2])
    a.correct += b.correct
    a.total += b.total
    assert a.compute(TRAIN)["mean_class"] == pytest.approx(ref["mean_class"])


def test_bad_inputs():
    with pytest.raises(DataError, match="0..6"):
        classification_metrics([0], [7], TRAIN)
    with pytest.raises(DataError, match="3 predictions for 2 labels"):
        classification_metrics([0, 1, 2], [0, 1], TRAIN)
    with pytest.raises(DataError, match="one entry per class"):
        MetricAccumulator(7).compute([1, 2])
    with pytest.raises(DataError, match="integer"):
        classification_metrics(np.array([0.5]), [0], TRAIN)
    with pytest.raises(DataError, match="num_classes"):
        MetricAccumulator(0)
