import math

import pytest
import torch
from torch import nn

from al_lightning.methods import EMATeacher, FixMatch, Supervised
from al_lightning.methods.base import cosine_factor
from al_lightning.methods.fixmatch import fixmatch_loss


def test_fixmatch_loss_and_mask_on_a_hand_made_batch():
    logits_x = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1])
    # weak view: sample 0 confident (p = 0.9997 for class 1), sample 1 not (p = 0.73)
    logits_w = torch.tensor([[0.0, 8.0], [1.0, 0.0]])
    logits_s = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    out = fixmatch_loss(logits_x, targets, logits_w, logits_s, threshold=0.95, lambda_u=2.0)
    ce = lambda logit, y: -logit[y] + math.log(sum(math.exp(v) for v in logit))  # noqa: E731
    loss_x = (ce([2.0, 0.0], 0) + ce([0.0, 1.0], 1)) / 2
    loss_u = (ce([1.0, 0.0], 1) * 1 + ce([0.0, 3.0], 0) * 0) / 2  # mean over the whole batch
    assert out["mask"].tolist() == [1.0, 0.0]
    assert out["pseudo_label"].tolist() == [1, 0]
    assert out["loss_x"].item() == pytest.approx(loss_x, rel=1e-6)
    assert out["loss_u"].item() == pytest.approx(loss_u, rel=1e-6)
    assert out["loss"].item() == pytest.approx(loss_x + 2.0 * loss_u, rel=1e-6)


def test_pseudo_labels_carry_no_gradient():
    logits_w = torch.tensor([[0.0, 9.0]], requires_grad=True)
    logits_s = torch.tensor([[0.0, 0.0]], requires_grad=True)
    out = fixmatch_loss(torch.zeros(1, 2, requires_grad=True), torch.tensor([0]), logits_w, logits_s, 0.95, 1.0)
    out["loss"].backward()
    assert logits_w.grad is None or torch.all(logits_w.grad == 0)
    assert logits_s.grad.abs().sum() > 0


def test_fixmatch_step_uses_one_forward_and_hands_detached_outputs():
    model = FixMatch(backbone="small_cnn", num_classes=3, in_channels=1, backbone_kwargs={"width": 4})
    calls = []
    model.model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batch = {"labeled": (torch.randn(2, 1, 8, 8), torch.tensor([0, 2])),
             "unlabeled": {"weak": torch.randn(5, 1, 8, 8), "strong": torch.randn(5, 1, 8, 8),
                           "index": torch.arange(5) + 10}}
    out = model.training_step(batch, 0)
    assert calls == [12]  # 2 labeled + 5 weak + 5 strong in a single pass
    unlabeled = out["unlabeled"]
    assert unlabeled["index"].tolist() == list(range(10, 15))
    assert unlabeled["probs_weak"].shape == (5, 3) and not unlabeled["probs_weak"].requires_grad
    assert not unlabeled["probs_strong"].requires_grad
    assert torch.allclose(unlabeled["probs_strong"].sum(-1), torch.ones(5))
    assert out["loss"].requires_grad


def test_optimizer_groups_exclude_bn_and_bias_from_weight_decay():
    model = Supervised(backbone="small_cnn", num_classes=3, in_channels=1, scheduler="none")
    optimizer = model.configure_optimizers()
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.model.parameters()))


def test_cosine_schedule_is_fixmatch_7_16():
    assert cosine_factor(0, 100) == 1.0
    assert cosine_factor(50, 100) == pytest.approx(math.cos(7 * math.pi / 32))
    assert cosine_factor(100, 100) == pytest.approx(math.cos(7 * math.pi / 16))


def test_ema_teacher_averages_parameters_and_copies_buffers():
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    teacher = EMATeacher(student, decay=0.9)
    before = [p.clone() for p in teacher.module.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()
    student(torch.randn(8, 2))  # moves BN running stats
    teacher.update(student)
    for old, new, cur in zip(before, teacher.module.parameters(), student.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * cur)
    for ema_b, b in zip(teacher.module.buffers(), student.buffers()):
        assert torch.equal(ema_b, b)
    assert not any(p.requires_grad for p in teacher.module.parameters())
    teacher.train()
    assert not teacher.module.training
