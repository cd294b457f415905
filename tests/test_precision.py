"""bf16-mixed training with channels-last weights: the network runs in bf16, every piece of
per-sample state and every score stays in float32 or float64."""

import lightning as L
import torch

from al_lightning.methods import FixMatch, FlexMatch
from al_lightning.methods.parts.feature_realignment import FeatureRealignment, LabeledFeatureQueues
from al_lightning.scoring.callbacks import OnlineScoring


def test_feature_queue_matching_under_bf16_autocast_equals_float32():
    """Neighbours whose cosines differ below bf16's resolution: a bf16 product ties them and picks
    the first row; the queue's match must stay the float32 argmax (the last row)."""
    torch.manual_seed(0)
    dim, rows = 64, 6
    base = torch.nn.functional.normalize(torch.randn(dim), dim=0)
    noise = torch.nn.functional.normalize(torch.randn(rows, dim), dim=1)
    strong = base + torch.linspace(0.010, 0.002, rows)[:, None] * noise  # the last row is the closest
    queues = LabeledFeatureQueues(torch.arange(rows), pool_size=rows, dim=dim, length=1)
    queues.push(torch.arange(rows), strong, strong)
    query = base[None].repeat(3, 1)
    exact = queues.nearest_rows(query)
    assert exact.tolist() == [rows - 1] * 3
    bank = torch.nn.functional.normalize(strong, dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        naive = (query @ bank.T).argmax(dim=1)
        guarded = queues.nearest_rows(query)
    assert naive.tolist() != exact.tolist()  # what an unguarded bf16 product would pick
    assert torch.equal(guarded, exact)


def test_bf16_mixed_channels_last_fit_keeps_state_and_scores_in_full_precision(digits):
    L.seed_everything(0)
    dm = digits
    model = FlexMatch(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4},
                      threshold=0.0, channels_last=True, parts=[FeatureRealignment(queue_length=3)])
    conv_dtypes, views_layout = [], []
    first_conv = next(m for m in model.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda mod, args, out: conv_dtypes.append(out.dtype))

    class Views(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            views_layout.append(batch["unlabeled"]["strong"].is_contiguous(memory_format=torch.channels_last))

    scoring = OnlineScoring()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, precision="bf16-mixed", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        use_distributed_sampler=False, callbacks=[scoring, Views()])
    trainer.fit(model, datamodule=dm)
    assert torch.bfloat16 in conv_dtypes and views_layout == [True] * 3
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert first_conv.weight.dtype == torch.float32  # the master weights
    state = model.sample_state()
    assert state["learning_effect"].dtype == torch.float32 and state["selected_label"].dtype == torch.int64
    assert (state["selected_label"][dm.pool.unlabeled_indices] >= 0).sum() > 0  # the curriculum was updated
    queue = state["parts.0.FeatureRealignment.queue_strong"]
    assert queue.dtype == torch.float32 and queue.abs().sum() > 0
    assert scoring.state.u_mean.dtype == torch.float64 and scoring.state.score.dtype == torch.float64
    assert int((scoring.state.last_pred >= 0).sum()) > 0


def test_compiled_backbone_trains_like_the_plain_one_and_leaves_the_teacher_plain(digits):
    """``compile_backbone`` wraps the student's feature extractor once, for every later fit too;
    the weights, their names and the teacher stay plain, and three steps land on the plain run's
    weights (inductor on the CPU; float sums may differ in order, hence the tolerance)."""
    def fit(compile_backbone: bool) -> FlexMatch:
        L.seed_everything(0)
        model = FlexMatch(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4},
                          compile_backbone=compile_backbone)
        for _ in range(2):  # a second fit of the same model must not wrap the wrapper
            trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                                use_distributed_sampler=False)
            trainer.fit(model, datamodule=digits)
        return model

    from torch._dynamo.utils import counters

    plain = fit(False)
    counters.clear()
    compiled = fit(True)
    assert counters["stats"]["unique_graphs"] > 0  # the steps ran the compiled extractor
    wrapped = vars(compiled.model)["embed"]
    assert getattr(wrapped, "_torchdynamo_orig_callable", None) is not None
    assert getattr(wrapped._torchdynamo_orig_callable, "_torchdynamo_orig_callable", None) is None
    assert "embed" not in vars(compiled.ema.module) and "embed" not in vars(plain.model)
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    for name, weight in plain.state_dict().items():
        assert torch.allclose(compiled.state_dict()[name].float(), weight.float(), atol=1e-4), name


def test_the_default_layout_is_channels_last_on_a_cpu_and_as_asked_otherwise(digits):
    """None (the default) picks channels-last for a fit on a CPU, for the student, the teacher and
    the views the data module builds; an explicit False keeps the contiguous layout."""
    layouts = {}
    for asked in (None, False):
        L.seed_everything(0)
        model = FixMatch(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4},
                         channels_last=asked)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            use_distributed_sampler=False)
        trainer.fit(model, datamodule=digits)
        # weights of more than one input channel (one channel is laid out alike in both formats)
        weights = [m.weight for net in (model.model, model.ema.module) for m in net.modules()
                   if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
        layouts[asked] = {(w.is_contiguous(memory_format=torch.channels_last), w.is_contiguous()) for w in weights}
        layouts[asked, "views"] = model.memory_format
    assert layouts[None] == {(True, False)} and layouts[None, "views"] == torch.channels_last
    assert layouts[False] == {(False, True)} and layouts[False, "views"] == torch.contiguous_format
