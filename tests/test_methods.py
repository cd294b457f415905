import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn

from al_lightning.methods import EMATeacher, FixMatch, Supervised
from al_lightning.methods.base import cosine_factor
from al_lightning.methods.fixmatch import consistency_loss


def _batch(n_x=2, n_u=5, classes=3):
    return {"labeled": {"weak": torch.randn(n_x, 1, 8, 8), "target": torch.arange(n_x) % classes,
                        "index": torch.arange(n_x)},
            "unlabeled": {"weak": torch.randn(n_u, 1, 8, 8), "strong": torch.randn(n_u, 1, 8, 8),
                          "index": torch.arange(n_u) + 10}}


def test_fixmatch_loss_and_mask_on_a_hand_made_batch():
    model = FixMatch(backbone="small_cnn", num_classes=2, in_channels=1, backbone_kwargs={"width": 4},
                     lambda_u=2.0)
    logits_x = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # weak view: sample 0 confident (p = 0.9997 for class 1), sample 1 not (p = 0.73)
    logits_w = torch.tensor([[0.0, 8.0], [1.0, 0.0]])
    logits_s = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    model.model.embed = lambda x: torch.zeros(x.shape[0], 4)
    model.model.classify = lambda z: torch.cat([logits_x, logits_w, logits_s])
    batch = {"labeled": {"weak": torch.zeros(2, 1, 8, 8), "target": torch.tensor([0, 1]), "index": torch.arange(2)},
             "unlabeled": {"weak": torch.zeros(2, 1, 8, 8), "strong": torch.zeros(2, 1, 8, 8),
                           "index": torch.tensor([7, 9])}}
    out = model.training_step(batch, 0)
    ce = lambda logit, y: -logit[y] + math.log(sum(math.exp(v) for v in logit))  # noqa: E731
    loss_x = (ce([2.0, 0.0], 0) + ce([0.0, 1.0], 1)) / 2
    loss_u = (ce([1.0, 0.0], 1) * 1 + ce([0.0, 3.0], 0) * 0) / 2  # mean over the whole batch
    assert out["unlabeled"]["mask"].tolist() == [1.0, 0.0]
    assert out["loss"].item() == pytest.approx(loss_x + 2.0 * loss_u, rel=1e-6)
    assert consistency_loss(logits_s, torch.tensor([1, 0]), torch.tensor([1.0, 0.0])).item() == \
        pytest.approx(loss_u, rel=1e-6)


def test_pseudo_labels_carry_no_gradient():
    model = FixMatch(backbone="small_cnn", num_classes=3, in_channels=1, backbone_kwargs={"width": 4},
                     threshold=0.0)
    out = model.training_step(_batch(), 0)
    grads = torch.autograd.grad(out["loss"], [p for p in model.model.parameters()], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert not out["unlabeled"]["probs_weak"].requires_grad


def test_a_step_without_unlabeled_batch_trains_on_labeled_loss_alone():
    model = FixMatch(backbone="small_cnn", num_classes=3, in_channels=1, backbone_kwargs={"width": 4})
    batch = _batch()
    del batch["unlabeled"]
    loss = model.training_step(batch, 0)
    expected = torch.nn.functional.cross_entropy(model.model(batch["labeled"]["weak"]), batch["labeled"]["target"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_fixmatch_step_uses_one_forward_and_hands_detached_outputs():
    model = FixMatch(backbone="small_cnn", num_classes=3, in_channels=1, backbone_kwargs={"width": 4})
    calls = []
    model.model.features.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batch = {"labeled": {"weak": torch.randn(2, 1, 8, 8), "target": torch.tensor([0, 2]), "index": torch.tensor([3, 4])},
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


def test_bias_corrected_teacher_is_the_normalised_ema_of_the_student_iterates():
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    decay = 0.9
    teacher = EMATeacher(student, decay=decay)
    initial = [p.detach().clone() for p in teacher.module.parameters()]
    iterates = []
    for _ in range(4):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
        iterates.append([p.detach().clone() for p in student.parameters()])
        teacher.update(student)
    t = len(iterates)
    norm = sum((1 - decay) * decay ** (t - s) for s in range(1, t + 1))  # = 1 - decay^t
    assert norm == pytest.approx(1 - decay ** t)
    for k, p in enumerate(teacher.module.parameters()):
        by_hand = sum((1 - decay) * decay ** (t - s) * iterates[s - 1][k] for s in range(1, t + 1)) / norm
        assert torch.allclose(p, by_hand, atol=1e-6)
        assert not torch.allclose(p, initial[k])
    # after one step the teacher is the student's first iterate exactly: no trace of the initialisation
    teacher.reset(student)
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(3.0)
    teacher.update(student)
    assert all(torch.equal(a, b) for a, b in zip(teacher.module.parameters(), student.parameters()))
    assert int(teacher.num_updates) == 1


def test_ema_teacher_averages_parameters_and_copies_buffers():
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    teacher = EMATeacher(student, decay=0.9, bias_correction=False)
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


class RecordingLogger(Logger):
    """The metrics a trainer hands its loggers, by step."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, set[str]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, set(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


@pytest.mark.parametrize("every", [1, 2])
def test_training_values_are_logged_only_on_the_steps_the_loggers_receive(digits, every):
    """Each self.log costs about 0.6 ms of Python: a step logs only when the trainer hands its
    values on (every log_every_n_steps-th), and the loggers still receive every training value
    there."""
    L.seed_everything(0)
    model = FixMatch(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4})
    decisions = []
    log = model.log

    def watched(*args, **kwargs):
        decisions.append(model.trainer._logger_connector.should_update_logs)
        return log(*args, **kwargs)

    model.log = watched
    recorder = RecordingLogger()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=recorder, log_every_n_steps=every,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, use_distributed_sampler=False)
    trainer.fit(model, datamodule=digits)  # 2 epochs of 3 steps
    train = {"train/loss", "train/loss_x", "train/loss_u", "train/mask_rate"}
    logged = [(step, keys & train) for step, keys in recorder.rows if keys & train]
    assert logged == [(step, train) for step in range(every, 7, every)]
    assert all(decisions) and len(decisions) == len(logged) * (len(train) + 1)  # the four and "step"
