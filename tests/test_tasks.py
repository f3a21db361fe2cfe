"""Task types: registry, losses and torchmetrics metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fedmuscle_flwr.tasks import (
    BUILTIN_TASKS,
    IGNORE_INDEX,
    TASKS,
    Task,
    get_task,
    list_tasks,
    register_task,
)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# ------------------------------------------------------------------ registry
def test_builtin_tasks_and_their_contract() -> None:
    assert set(list_tasks()) >= {
        "image-classification",
        "multi-label-classification",
        "semantic-segmentation",
        "text-classification",
    }
    expected = {
        "image-classification": ("label", "pooled", "accuracy", {"image"}, {"accuracy"}),
        "text-classification": (
            "label",
            "pooled",
            "accuracy",
            {"text"},
            {"accuracy", "macro_f1"},
        ),
        "multi-label-classification": (
            "labels",
            "pooled",
            "map",
            {"image", "text"},
            {"map", "micro_f1"},
        ),
        "semantic-segmentation": ("mask", "dense", "miou", {"image"}, {"miou"}),
    }
    for name, (key, head, primary, modalities, metrics) in expected.items():
        task = get_task(name)
        assert task.name == name
        assert task.batch_keys == (key,) and task.target_key == key
        assert task.head == head and task.primary_metric == primary
        assert task.modalities == modalities
        assert set(task.metrics(3).names) == metrics and primary in metrics


def test_builtin_task_ids_come_from_the_registry() -> None:
    assert BUILTIN_TASKS == (
        "image-classification",
        "multi-label-classification",
        "semantic-segmentation",
        "text-classification",
    )
    assert all(get_task(name).name == name for name in BUILTIN_TASKS)


def test_unknown_task_lists_known_names() -> None:
    with pytest.raises(KeyError) as info:
        get_task("segmentation")
    message = str(info.value)
    assert "unknown task 'segmentation'" in message
    assert "semantic-segmentation" in message and "image-classification" in message


def test_register_custom_task_and_duplicates() -> None:
    class Regression(Task):
        modalities = frozenset({"image"})
        target_key = "value"
        primary_metric = "mse"

        def loss(self, logits, batch):  # type: ignore[no-untyped-def]
            return torch.nn.functional.mse_loss(logits.squeeze(-1), self.targets(batch))

        def metric_objects(self, num_classes):  # type: ignore[no-untyped-def]
            from torchmetrics.regression import MeanSquaredError

            return {"mse": MeanSquaredError()}

        def metric_inputs(self, logits, batch):  # type: ignore[no-untyped-def]
            return logits.squeeze(-1), self.targets(batch)

    try:
        register_task("test-regression")(Regression)
        task = get_task("test-regression")
        assert isinstance(task, Regression) and task.name == "test-regression"
        batch = {"value": torch.tensor([1.0, 3.0])}
        logits = torch.tensor([[2.0], [3.0]])
        assert float(task.loss(logits, batch)) == pytest.approx(0.5)
        with pytest.raises(ValueError, match="already registered"):
            register_task("test-regression")(Regression)
        register_task("test-regression", exist_ok=True)(Regression)
        with pytest.raises(ValueError, match="already registered"):
            register_task("image-classification")(Regression)
        with pytest.raises(TypeError, match="Task subclass or instance"):
            register_task("test-not-a-task")(object)
    finally:
        TASKS.remove("test-regression")
    assert "test-regression" not in list_tasks()
    assert get_task("image-classification").name == "image-classification"


def test_modality_check() -> None:
    get_task("multi-label-classification").check_modality("text")
    with pytest.raises(ValueError, match="takes image inputs, not 'text'"):
        get_task("semantic-segmentation").check_modality("text")


# ------------------------------------------------------------------ single-label
LOGITS = torch.tensor(
    [[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 3.0, 0.0], [0.5, 1.0, 0.0]]
)  # argmax 0, 2, 1, 1


def test_image_classification_loss_and_accuracy() -> None:
    task = get_task("image-classification")
    batch = {"label": torch.tensor([0, 1, 1, 1])}
    rows = LOGITS.tolist()
    by_hand = [
        math.log(sum(math.exp(v) for v in row)) - row[y]
        for row, y in zip(rows, [0, 1, 1, 1], strict=True)
    ]
    assert float(task.loss(LOGITS, batch)) == pytest.approx(sum(by_hand) / 4, rel=1e-6)
    metrics = task.metrics(3)
    metrics.update(LOGITS, batch)
    assert metrics.compute() == pytest.approx({"accuracy": 3 / 4})


def test_text_classification_accuracy_and_macro_f1_accumulate_and_reset() -> None:
    task = get_task("text-classification")
    labels = torch.tensor([0, 1, 1, 2])
    # preds 0, 2, 1, 1 -> class 0: F1 1; class 1: P 1/2, R 1/2, F1 1/2; class 2: F1 0.
    metrics = task.metrics(3)
    metrics.update(LOGITS[:2], {"label": labels[:2]})  # two batches, one result
    metrics.update(LOGITS[2:], {"label": labels[2:]})
    assert metrics.compute() == pytest.approx({"accuracy": 0.5, "macro_f1": 0.5})
    metrics.reset()
    metrics.update(LOGITS[:1], {"label": labels[:1]})
    assert metrics.compute()["accuracy"] == pytest.approx(1.0)


def test_single_label_shape_errors() -> None:
    task = get_task("image-classification")
    with pytest.raises(ValueError, match="expects logits"):
        task.loss(LOGITS, {"label": torch.tensor([0, 1])})
    with pytest.raises(KeyError, match="needs batch key 'label'"):
        task.loss(LOGITS, {"labels": torch.zeros(4, 3)})


# ------------------------------------------------------------------ multi-label
PROBS = [[0.9, 0.2], [0.8, 0.7], [0.1, 0.6]]
MULTI_HOT = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])


def test_multilabel_map_and_micro_f1_by_hand() -> None:
    task = get_task("multi-label-classification")
    logits = torch.tensor([[logit(p) for p in row] for row in PROBS])
    # Label 0: scores .9(+) .8(-) .1(+): AP = (1/1 + 2/3) / 2 = 5/6. Label 1: .7(+) first: 1.
    # At 0.5: TP (0,0) (1,1); FP (1,0) (2,1); FN (2,0) -> micro-F1 = 2*2 / (2*2 + 2 + 1).
    metrics = task.metrics(2)
    metrics.update(logits, {"labels": MULTI_HOT})
    assert metrics.compute() == pytest.approx({"map": (5 / 6 + 1) / 2, "micro_f1": 4 / 7})


def test_multilabel_threshold_is_on_probability_even_for_logits_within_0_1() -> None:
    # Logit 0.2 means p = 0.55 (positive); read as a probability it would be negative.
    task = get_task("multi-label-classification")
    metrics = task.metrics(2)
    metrics.update(torch.tensor([[0.2, 0.9]]), {"labels": torch.tensor([[1.0, 1.0]])})
    assert metrics.compute()["micro_f1"] == pytest.approx(1.0)


def test_multilabel_loss_is_bce_with_logits() -> None:
    task = get_task("multi-label-classification")
    logits = torch.tensor([[logit(p) for p in row] for row in PROBS])
    by_hand = [
        -math.log(p if y else 1 - p)
        for row, ys in zip(PROBS, MULTI_HOT.tolist(), strict=True)
        for p, y in zip(row, ys, strict=True)
    ]
    assert float(task.loss(logits, {"labels": MULTI_HOT})) == pytest.approx(
        sum(by_hand) / 6, rel=1e-6
    )


# ------------------------------------------------------------------ segmentation
def test_segmentation_miou_ignores_void_and_absent_classes() -> None:
    task = get_task("semantic-segmentation")
    mask = torch.tensor([[[0, 0], [1, IGNORE_INDEX]]])
    preds = torch.tensor([[[0, 1], [1, 1]]])
    logits = torch.nn.functional.one_hot(preds, 3).permute(0, 3, 1, 2).float() * 4.0
    # Class 0: TP 1, union 2 -> 1/2. Class 1: TP 1, union 2 (the void pixel does not
    # count) -> 1/2. Class 2: absent from both -> left out. mIoU = 1/2.
    metrics = task.metrics(3)
    metrics.update(logits, {"mask": mask})
    assert metrics.compute() == pytest.approx({"miou": 0.5})


def test_segmentation_loss_is_mean_pixel_cross_entropy_without_void() -> None:
    task = get_task("semantic-segmentation")
    logits = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # (1, 2 classes, 1, 2)
    mask = torch.tensor([[[1, IGNORE_INDEX]]])
    by_hand = math.log(math.exp(1.0) + math.exp(0.0)) - 0.0  # pixel 0, class 1
    assert float(task.loss(logits, {"mask": mask})) == pytest.approx(by_hand, rel=1e-6)


def test_segmentation_needs_logits_at_mask_resolution() -> None:
    task = get_task("semantic-segmentation")
    with pytest.raises(ValueError, match="same resolution"):
        task.loss(torch.zeros(1, 2, 4, 4), {"mask": torch.zeros(1, 8, 8, dtype=torch.long)})


def test_metrics_need_a_positive_class_count() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        get_task("image-classification").metrics(0)
