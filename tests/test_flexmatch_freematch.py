import math
from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch

from al_lightning.methods import METHODS
from al_lightning.methods.flexmatch import LABELED, UNUSED, CurriculumState, FlexMatch, convex_mapping
from al_lightning.methods.freematch import FreeMatch, fairness_loss

SMALL = {"backbone": "small_cnn", "in_channels": 1, "backbone_kwargs": {"width": 4}}


def _state(warmup=True, pool_size=12, unlabeled=range(2, 12), classes=3):
    """Ids 0 and 1 labeled, 2..11 unlabeled (|U| = 10)."""
    return CurriculumState(pool_size, np.array(list(unlabeled)), classes, thresh_warmup=warmup)


def _update(state, index, confidence, label, tau=0.95):
    state.update(torch.tensor(index), torch.tensor(confidence), torch.tensor(label), tau)


# ------------------------------------------------------------------ FlexMatch
def test_flexmatch_is_registered():
    assert METHODS.get("flexmatch") is FlexMatch and METHODS.get("freematch") is FreeMatch


def test_flexmatch_threshold_is_zero_at_the_first_step_and_masks_before_the_update():
    model = FlexMatch(num_classes=3, **SMALL)
    model.reset_sample_state(12, np.arange(2, 12))
    confident = [0.97, 0.02, 0.01]
    # step 0: beta = 0, so the unconfident class-0 sample 7 passes too; had the update (which makes
    # beta(0) = 5 / max(5, 5 unused) = 1, T(0) = 0.95) come first, it would not
    targets = torch.tensor([confident] * 5 + [[0.4, 0.35, 0.25]])
    assert model.masking(targets, torch.arange(2, 8)).tolist() == [1.0] * 6
    state = model.sample_state()
    assert state["selected_label"][2:8].tolist() == [0] * 5 + [UNUSED]
    assert state["class_counts"].tolist() == [5, 0, 0]
    assert state["learning_effect"].tolist() == [1.0, 0.0, 0.0]
    # step 1: T = [0.95, 0, 0]
    targets = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.5, 0.45], [0.96, 0.02, 0.02]])
    assert model.masking(targets, torch.tensor([7, 8, 9])).tolist() == [0.0, 1.0, 1.0]


def test_flexmatch_unused_bucket_is_in_the_denominator_with_warmup_only():
    with_warmup, without = _state(True), _state(False)
    for state in (with_warmup, without):
        _update(state, [2, 3, 4], [0.99, 0.97, 0.96], [0, 0, 1])
        assert state.class_counts.tolist() == [2, 1, 0]
    # 7 unused > max class count 2
    assert with_warmup.learning_effect.tolist() == pytest.approx([2 / 7, 1 / 7, 0])
    assert without.learning_effect.tolist() == pytest.approx([1.0, 0.5, 0])
    # once a class outgrows the unused bucket the two agree: counts [6, 1, 0], unused 3
    for state in (with_warmup, without):
        _update(state, [5, 6, 7, 8], [0.99] * 4, [0] * 4)
        assert state.learning_effect.tolist() == pytest.approx([1.0, 1 / 6, 0])


def test_flexmatch_convex_mapping_of_a_hand_made_beta():
    assert convex_mapping(torch.tensor([0.0, 0.5, 1.0, 2 / 7])).tolist() == pytest.approx([0, 1 / 3, 1, 1 / 6])
    state = _state()
    _update(state, [2, 3, 4], [0.99, 0.97, 0.96], [0, 0, 1])
    # beta = [2/7, 1/7, 0]: M = [(2/7)/(12/7), (1/7)/(13/7), 0] = [1/6, 1/13, 0]
    assert state.class_thresholds(0.9).tolist() == pytest.approx([0.9 / 6, 0.9 / 13, 0])


def test_flexmatch_updates_only_from_samples_above_the_fixed_tau():
    state = _state()
    _update(state, [2, 3, 4, 5], [0.95, 0.9499, 0.5, 1.0], [1, 0, 0, 2])
    assert state.selected_label[2:6].tolist() == [1, UNUSED, UNUSED, 2]
    assert state.class_counts.tolist() == [0, 1, 1]
    # a selected sample is re-labeled only by a later confident prediction
    _update(state, [2, 5], [0.3, 0.96], [0, 0])
    assert state.selected_label[2:6].tolist() == [1, UNUSED, UNUSED, 0]
    assert state.class_counts.tolist() == [1, 1, 0]


def test_flexmatch_repeated_ids_in_one_step_latest_write_wins():
    state = _state()
    _update(state, [5, 6, 5, 6], [0.99, 0.99, 0.98, 0.2], [0, 1, 2, 0])
    # id 5: class 0 then class 2 -> 2; id 6: class 1 then an entry below tau (no write) -> 1
    assert state.selected_label[5].item() == 2 and state.selected_label[6].item() == 1
    assert state.class_counts.tolist() == [0, 1, 1]


def test_flexmatch_labeled_ids_are_never_counted():
    state = _state()
    assert state.selected_label.tolist() == [LABELED] * 2 + [UNUSED] * 10
    _update(state, [0, 1, 2], [0.99, 0.99, 0.99], [0, 0, 1])
    assert state.selected_label[:3].tolist() == [LABELED, LABELED, 1]
    assert state.class_counts.tolist() == [0, 1, 0]
    # the unused bucket started at |U| = 10, so 9 remain: beta(1) = 1/9
    assert state.learning_effect.tolist() == pytest.approx([0, 1 / 9, 0])


def test_flexmatch_keeps_beta_when_one_bucket_holds_all_of_u_as_the_reference():
    state = _state(unlabeled=[2, 3])
    _update(state, [2], [0.99], [0])  # counts [1, 0, 0], 1 unused -> beta = [1, 0, 0]
    assert state.learning_effect.tolist() == [1.0, 0.0, 0.0]
    _update(state, [2, 3], [0.99, 0.99], [1, 1])  # counts [0, 2, 0]: all of U in class 1
    assert state.class_counts.tolist() == [0, 2, 0]
    assert state.learning_effect.tolist() == [1.0, 0.0, 0.0]  # not recomputed


def _reference_replay(stream, unlabeled, classes, tau, warmup):
    """USB's hook, entry by entry with a Counter over U (the ids outside U filtered out)."""
    selected = {int(i): -1 for i in unlabeled}
    beta = [0.0] * classes
    for index, confidence, label in stream:
        for i, p, c in zip(index.tolist(), confidence.tolist(), label.tolist()):
            if i in selected and p >= tau:
                selected[i] = c
        counter = Counter(selected.values())
        if max(counter.values()) < len(selected):
            denominator = max(counter.values()) if warmup else max(v for k, v in counter.items() if k != -1)
            beta = [counter[c] / denominator for c in range(classes)]
    return selected, beta


@pytest.mark.parametrize("warmup", [True, False])
def test_flexmatch_equals_a_sequential_counter_replay_on_random_streams(warmup):
    generator = torch.Generator().manual_seed(0)
    unlabeled = np.array([1, 2, 4, 5, 7, 8, 9, 11, 12, 13])
    stream = []
    for _ in range(30):
        index = torch.randint(0, 14, (8,), generator=generator)  # repeats and labeled ids included
        confidence = torch.rand(8, generator=generator) * 0.4 + 0.6
        stream.append((index, confidence, torch.randint(0, 4, (8,), generator=generator)))
    state = CurriculumState(14, unlabeled, 4, thresh_warmup=warmup)
    for step in stream:
        state.update(*step, tau=0.8)
    selected, beta = _reference_replay(stream, unlabeled, 4, 0.8, warmup)
    assert state.selected_label[unlabeled].tolist() == [selected[int(i)] for i in unlabeled]
    assert state.class_counts.tolist() == [sum(v == c for v in selected.values()) for c in range(4)]
    assert torch.equal(state.learning_effect, torch.tensor(beta, dtype=torch.float32))  # float32 as USB
    assert sum(v != -1 for v in selected.values()) >= 5


# ------------------------------------------------------------------ FreeMatch
BATCH_1 = [[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.4, 0.35, 0.25]]
BATCH_2 = [[0.1, 0.1, 0.8], [0.3, 0.5, 0.2], [0.6, 0.3, 0.1]]


def test_freematch_state_after_one_and_two_hand_made_batches():
    model = FreeMatch(num_classes=3, ema_p=0.5, **SMALL)
    model.reset_sample_state(20, np.arange(20))
    state = model.sample_state()
    assert state["global_threshold"].item() == pytest.approx(1 / 3)
    assert state["p_model"].tolist() == pytest.approx([1 / 3] * 3)
    assert state["label_hist"].tolist() == pytest.approx([1 / 3] * 3)

    mask = model.masking(torch.tensor(BATCH_1), torch.arange(3))
    state = model.sample_state()
    tau_1 = 0.5 / 3 + 0.5 * (0.7 + 0.6 + 0.4) / 3
    p_1 = [0.5 / 3 + 0.5 * 1.3 / 3, 0.5 / 3 + 0.5 * 1.15 / 3, 0.5 / 3 + 0.5 * 0.55 / 3]
    h_1 = [0.5 / 3 + 0.5 * 2 / 3, 0.5 / 3 + 0.5 / 3, 0.5 / 3]
    assert state["global_threshold"].item() == pytest.approx(tau_1)  # 0.45
    assert state["p_model"].tolist() == pytest.approx(p_1)
    assert state["label_hist"].tolist() == pytest.approx(h_1)
    # updated before masking: sample 2 (0.4) passes the initial 1/3 but not tau_1 = 0.45 for class 0;
    # sample 1 (class 1) faces tau_1 * p_1[1] / p_1[0] = 0.42
    assert mask.tolist() == [1.0, 1.0, 0.0]

    model.masking(torch.tensor(BATCH_2), torch.arange(3))
    state = model.sample_state()
    tau_2 = 0.5 * tau_1 + 0.5 * (0.8 + 0.5 + 0.6) / 3
    p_2 = [0.5 * p + 0.5 * q for p, q in zip(p_1, [1.0 / 3, 0.9 / 3, 1.1 / 3])]
    h_2 = [0.5 * h + 0.5 / 3 for h in h_1]
    assert state["global_threshold"].item() == pytest.approx(tau_2)
    assert state["p_model"].tolist() == pytest.approx(p_2)
    assert state["label_hist"].tolist() == pytest.approx(h_2)
    assert state["global_threshold"].dtype == torch.float64


def test_freematch_mask_uses_max_normalised_local_thresholds():
    model = FreeMatch(num_classes=3, ema_p=1.0, **SMALL)  # m = 1 freezes the hand-made state
    model.reset_sample_state(20, np.arange(20))
    model.thresholds.global_threshold = torch.tensor(0.8, dtype=torch.float64)
    model.thresholds.p_model = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    # thresholds [0.8, 0.4, 0.4]
    targets = torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.5, 0.45], [0.25, 0.3, 0.45], [0.3, 0.39, 0.31]])
    assert model.masking(targets, torch.arange(4)).tolist() == [0.0, 1.0, 1.0, 0.0]


def _softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_freematch_fairness_loss_by_hand():
    logits_strong = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    mask = torch.tensor([1.0, 0.0, 1.0])
    p_model, label_hist = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.4, 0.4, 0.2])
    loss = fairness_loss(logits_strong, mask, p_model, label_hist)
    # masked samples 0 (argmax 0) and 2 (argmax 2): h_bar = [1/2, 0, 1/2], class 1 absent -> scale 0
    q0, q2 = _softmax([2, 0, 0]), _softmax([0, 0, 1])
    mean = [(a + b) / 2 for a, b in zip(q0, q2)]
    modulated = [mean[0] * 2, 0.0, mean[2] * 2]
    modulated = [m / sum(modulated) for m in modulated]
    target = [0.5 / 0.4, 0.3 / 0.4, 0.2 / 0.2]
    target = [t / sum(target) for t in target]
    by_hand = sum(t * math.log(m + 1e-12) for t, m in zip(target, modulated))
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    assert by_hand == pytest.approx(-7.4253, abs=1e-3)
    # the sign of the paper's L_f = -H(target, modulated): never positive
    assert loss.item() < 0
    loss.backward()
    assert logits_strong.grad[1].abs().sum() == 0 and logits_strong.grad[0].abs().sum() > 0


def test_freematch_fairness_loss_is_zero_with_an_empty_mask():
    logits_strong = torch.randn(4, 3, requires_grad=True)
    loss = fairness_loss(logits_strong, torch.zeros(4), torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.4, 0.4, 0.2]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits_strong.grad, torch.zeros(4, 3))


def test_freematch_step_adds_lambda_e_times_the_fairness_loss():
    model = FreeMatch(num_classes=2, ema_p=0.5, lambda_e=0.1, **SMALL)
    model.reset_sample_state(20, np.arange(20))
    logits_x = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    logits_w = torch.tensor([[0.0, 8.0], [1.0, 0.0]])
    logits_s = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    model.model.embed = lambda x: torch.zeros(x.shape[0], 4)
    model.model.classify = lambda z: torch.cat([logits_x, logits_w, logits_s])
    batch = {"labeled": {"weak": torch.zeros(2, 1, 8, 8), "target": torch.tensor([0, 1]), "index": torch.arange(2)},
             "unlabeled": {"weak": torch.zeros(2, 1, 8, 8), "strong": torch.zeros(2, 1, 8, 8),
                           "index": torch.tensor([7, 9])}}
    out = model.training_step(batch, 0)
    ce = lambda logit, y: -logit[y] + math.log(sum(math.exp(v) for v in logit))  # noqa: E731
    # both weak samples pass the updated thresholds (tau_1 = 0.25 + 0.5 * mean max < 0.74)
    assert out["unlabeled"]["mask"].tolist() == [1.0, 1.0]
    loss_x = (ce([2.0, 0.0], 0) + ce([0.0, 1.0], 1)) / 2
    loss_u = (ce([1.0, 0.0], 1) + ce([0.0, 3.0], 0)) / 2
    fair = fairness_loss(logits_s, torch.ones(2), model.thresholds.p_model, model.thresholds.label_hist)
    assert fair.item() != 0
    assert out["loss"].item() == pytest.approx(loss_x + loss_u + 0.1 * fair.item(), rel=1e-6)


# ------------------------------------------------------------------ real fits
class StepRecorder(L.Callback):
    """The state at the start of each fit and the unlabeled outputs of every step."""

    def __init__(self):
        self.at_start, self.steps = [], []

    def on_train_start(self, trainer, pl_module):
        self.at_start.append(pl_module.sample_state())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({k: v.detach().cpu() for k, v in outputs["unlabeled"].items()})


def _fit(model, dm, recorder):
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        use_distributed_sampler=False, callbacks=[recorder])
    trainer.fit(model, datamodule=dm)


def _label_more(dm, count):
    ids = dm.pool.unlabeled_indices[:count]
    dm.pool.label(ids, dm.ground_truth(ids))


def test_flexmatch_fit_resets_and_saves_the_curriculum(digits):
    torch.manual_seed(0)
    model = FlexMatch(num_classes=10, threshold=0.0, **SMALL)  # tau = 0: every entry is written
    recorder = StepRecorder()
    for fit in range(2):
        recorder.steps.clear()
        _fit(model, digits, recorder)
        labeled, unlabeled = digits.pool.labeled_indices, digits.pool.unlabeled_indices
        fresh = recorder.at_start[fit]["selected_label"]
        assert (fresh[labeled] == LABELED).all() and (fresh[unlabeled] == UNUSED).all()
        assert recorder.at_start[fit]["class_counts"].sum() == 0
        expected = torch.full((digits.pool.size,), LABELED)
        expected[unlabeled] = UNUSED
        for step in recorder.steps:  # sequential replay: the last prediction of each id
            for i, p in zip(step["index"].tolist(), step["probs_weak"].argmax(-1).tolist()):
                expected[i] = p
        saved = model.sample_state()
        assert torch.equal(saved["selected_label"], expected)
        assert saved["class_counts"].tolist() == torch.bincount(expected[expected >= 0], minlength=10).tolist()
        assert saved["class_counts"].sum() > 0 and saved["selected_label"].device.type == "cpu"
        _label_more(digits, 5)


def test_freematch_fit_resets_and_saves_the_thresholds(digits):
    torch.manual_seed(0)
    model = FreeMatch(num_classes=10, ema_p=0.5, **SMALL)
    recorder = StepRecorder()
    for fit in range(2):
        recorder.steps.clear()
        _fit(model, digits, recorder)
        assert recorder.at_start[fit]["global_threshold"].item() == pytest.approx(0.1)
        assert recorder.at_start[fit]["p_model"].tolist() == pytest.approx([0.1] * 10)
        tau, p_model = 0.1, [0.1] * 10
        for step in recorder.steps:
            probs = step["probs_weak"].double()
            tau = 0.5 * tau + 0.5 * probs.max(-1).values.mean().item()
            p_model = [0.5 * a + 0.5 * b for a, b in zip(p_model, probs.mean(0).tolist())]
        saved = model.sample_state()
        assert len(recorder.steps) == 3 and saved["global_threshold"].item() == pytest.approx(tau, rel=1e-9)
        assert saved["p_model"].tolist() == pytest.approx(p_model, rel=1e-9)
        _label_more(digits, 5)
