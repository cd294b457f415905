import logging
import math

import lightning as L
import pytest
import torch
from safetensors.torch import save_file

from al_lightning.cli import ActiveLearningCLI
from al_lightning.data import ActiveDataModule
from al_lightning.methods import Supervised
from al_lightning.methods.base import cosine_factor, lr_factor
from al_lightning.models import create_backbone
from al_lightning.models.cnn13 import CNN13

# a 2-block ViT on 32x32 inputs: tiny, but with timm's real layer structure (group_matcher, head)
TINY_VIT = "timm:vit_tiny_patch16_224"
TINY_VIT_KWARGS = {"img_size": 32, "patch_size": 8, "depth": 2}


# ------------------------------------------------------------------ cnn13
@pytest.mark.parametrize("channels, side", [(3, 32), (1, 28)])
def test_cnn13_shapes_on_cifar_and_mnist_inputs(channels, side):
    model = create_backbone("cnn13", num_classes=10, in_channels=channels).eval()
    assert isinstance(model, CNN13)
    x = torch.randn(4, channels, side, side)
    features = model.embed(x)
    assert features.shape == (4, 128) and model.num_features == 128
    assert torch.allclose(features.norm(dim=1), torch.ones(4), atol=1e-5)  # the reference's isL2
    assert model(x).shape == (4, 10)


def test_cnn13_parameter_count_matches_the_reference_network():
    """By hand, per conv: weight_v (k*k*c_in*c_out) + weight_g (c_out) + bias (c_out), then BN (2 c_out):

    conv1a 3*128*9 + 2*128 + 256   =     3,968      conv2b 256*256*9 + 512 + 512 =   590,848
    conv1b 128*128*9 + 256 + 256   =   147,968      conv2c                      =   590,848
    conv1c                         =   147,968      conv3a 256*512*9 + 1024 + 1024 = 1,181,696
    conv2a 128*256*9 + 512 + 512   =   295,936      conv3b 512*256 + 512 + 512  =   132,096
                                                    conv3c 256*128 + 256 + 256  =    33,280
    fc (weight-normed) 128*10 + 10 + 10 = 1,300.  Total 3,125,908 (the reference's CNN, with its second,
    unused head of 1,300 more, has 3,127,208). One input channel: 2*128*9 fewer in conv1a.
    """
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(create_backbone("cnn13", 10, 3)) == 3_125_908
    assert count(create_backbone("cnn13", 10, 1)) == 3_125_908 - 2 * 128 * 9


def test_cnn13_classifies_its_embedding_with_a_weight_normed_linear_head():
    torch.manual_seed(0)
    model = create_backbone("cnn13", num_classes=5, in_channels=3).eval()
    x = torch.randn(3, 3, 32, 32)
    z = model.embed(x)
    fc = model.head()
    assert isinstance(fc, torch.nn.Linear)  # ALFA-Mix relies on an affine head
    g = fc.parametrizations.weight.original0
    v = fc.parametrizations.weight.original1
    weight = g * v / v.norm(dim=1, keepdim=True)
    assert torch.allclose(model(x), z @ weight.T + fc.bias, atol=1e-5)
    assert torch.allclose(model.classify(z), model(x))


def test_cnn13_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    model = create_backbone("cnn13", num_classes=10, in_channels=1)
    x = torch.randn(8, 1, 28, 28)
    model.train()
    assert not torch.allclose(model.embed(x), model.embed(x))
    model.eval()
    assert torch.equal(model.embed(x), model.embed(x))


def test_cnn13_trains_inside_a_method_and_its_weight_norm_survives_the_ema_copy():
    torch.manual_seed(0)
    model = Supervised(backbone="cnn13", num_classes=10, in_channels=1, scheduler="none")
    batch = {"labeled": {"weak": torch.randn(4, 1, 28, 28), "target": torch.tensor([0, 1, 2, 3]),
                         "index": torch.arange(4)}}
    model.training_step(batch, 0).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.model.parameters())
    with torch.no_grad():
        model.model.fc.parametrizations.weight.original0.mul_(3.0)  # g only: the head's weight triples
    model.ema.update(model.model)  # the first bias-corrected update copies the student
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(model(x), model.model.eval()(x), atol=1e-5)


# ------------------------------------------------------------------ timm: local weights
def _tiny_vit(num_classes=5, **kwargs):
    return create_backbone(TINY_VIT, num_classes=num_classes, in_channels=3, **TINY_VIT_KWARGS, **kwargs).eval()


@pytest.mark.parametrize("layout", ["pth", "safetensors", "usb_checkpoint"])
def test_timm_backbone_loads_a_local_state_dict(tmp_path, layout):
    torch.manual_seed(0)
    source = _tiny_vit()
    state = source.model.state_dict()
    path = tmp_path / f"weights.{'safetensors' if layout == 'safetensors' else 'pth'}"
    if layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif layout == "usb_checkpoint":  # USB's files: {"model": ...} saved from a DDP-wrapped net
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    torch.manual_seed(1)
    fresh = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(fresh(x), source(x))
    loaded = _tiny_vit(weights=str(path))
    assert torch.equal(loaded(x), source(x))


def test_timm_weights_for_another_class_count_keep_the_trunk_and_a_fresh_head(tmp_path, caplog):
    torch.manual_seed(0)
    source = _tiny_vit(num_classes=1000)
    path = tmp_path / "im1k.pth"
    torch.save(source.model.state_dict(), path)
    torch.manual_seed(1)
    reference_head = _tiny_vit(num_classes=7).model.head.weight.detach().clone()
    torch.manual_seed(1)
    with caplog.at_level(logging.INFO, logger="al_lightning"):
        loaded = _tiny_vit(num_classes=7, weights=str(path))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.embed(x), source.embed(x))
    assert loaded(x).shape == (2, 7)
    assert torch.equal(loaded.model.head.weight, reference_head)  # the initialisation, untouched
    assert any("head.weight" in r.getMessage() and "initialisation" in r.getMessage() for r in caplog.records)


def test_timm_weights_that_do_not_fit_the_trunk_fail_in_one_line(tmp_path):
    state = _tiny_vit().model.state_dict()
    state["blocks.9.extra"] = torch.zeros(1)
    del state["norm.weight"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        _tiny_vit(weights=str(path))
    message = str(err.value)
    assert "\n" not in message and "norm.weight" in message and "blocks.9.extra" in message


def test_missing_timm_weights_train_from_scratch_with_exactly_one_warning(tmp_path, caplog):
    path = tmp_path / "absent.pth"
    with caplog.at_level(logging.WARNING):
        model = Supervised(backbone=TINY_VIT, num_classes=5, in_channels=3, scheduler="none",
                           backbone_kwargs={**TINY_VIT_KWARGS, "weights": str(path)})
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"weights file {path} not found: training vit_tiny_patch16_224 from scratch"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_timm_backbones_never_download():
    with pytest.raises(ValueError, match="never download"):
        _tiny_vit(pretrained=True)


# ------------------------------------------------------------------ optimizers
def test_adamw_keeps_the_no_decay_grouping():
    model = Supervised(backbone="small_cnn", num_classes=3, in_channels=1, optimizer="adamw", lr=1e-3,
                       weight_decay=0.05, scheduler="none")
    optimizer = model.configure_optimizers()
    assert type(optimizer) is torch.optim.AdamW
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert optimizer.defaults["betas"] == (0.9, 0.999) and decay["lr"] == no_decay["lr"] == 1e-3


def test_vit_position_embedding_and_class_token_are_exempt_from_weight_decay():
    model = Supervised(backbone=TINY_VIT, num_classes=5, in_channels=3, optimizer="adamw", scheduler="none",
                       backbone_kwargs=TINY_VIT_KWARGS)
    decay, no_decay = model.configure_optimizers().param_groups
    inner = model.model.model
    exempt = {id(inner.pos_embed), id(inner.cls_token)}
    assert exempt <= {id(p) for p in no_decay["params"]} and not exempt & {id(p) for p in decay["params"]}


def test_layer_decay_scales_each_vit_layer_below_the_head():
    """timm's ViT layers: 0 = patch embedding, cls token, position embedding; 1 = blocks.0;
    2 = blocks.1 and the final norm; 3 = the head. lr of layer i = lr * 0.5^(3 - i)."""
    lr = 1e-3
    model = Supervised(backbone=TINY_VIT, num_classes=5, in_channels=3, optimizer="adamw", lr=lr,
                       layer_decay=0.5, weight_decay=0.05, scheduler="none", backbone_kwargs=TINY_VIT_KWARGS)
    optimizer = model.configure_optimizers()
    lr_of, wd_of = {}, {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            lr_of[id(param)], wd_of[id(param)] = group["lr"], group["weight_decay"]
    names = dict(model.model.model.named_parameters())
    assert len(lr_of) == len(names)  # every parameter exactly once
    expected = {"head.weight": lr, "head.bias": lr, "norm.weight": lr / 2, "blocks.1.mlp.fc1.weight": lr / 2,
                "blocks.0.attn.qkv.weight": lr / 4, "patch_embed.proj.weight": lr / 8, "pos_embed": lr / 8,
                "cls_token": lr / 8}
    for name, value in expected.items():
        assert lr_of[id(names[name])] == pytest.approx(value), name
    assert wd_of[id(names["blocks.0.attn.qkv.weight"])] == 0.05
    assert wd_of[id(names["blocks.0.attn.qkv.bias"])] == wd_of[id(names["pos_embed"])] == 0.0


def test_layer_decay_needs_a_timm_backbone():
    model = Supervised(backbone="small_cnn", num_classes=3, in_channels=1, layer_decay=0.5, scheduler="none")
    with pytest.raises(ValueError, match="timm"):
        model.configure_optimizers()


# ------------------------------------------------------------------ schedules
def test_cosine_annealing_reaches_zero_at_the_stretched_horizon():
    # Rethinking: 200 epochs, zero at 210 -> K' = 1.05 K
    assert lr_factor(0, 200, "cosine_annealing", anneal_epochs_ratio=1.05) == 1.0
    assert lr_factor(105, 200, "cosine_annealing", anneal_epochs_ratio=1.05) == pytest.approx(0.5)
    last = 0.5 * (1 + math.cos(math.pi * 199 / 210))
    assert lr_factor(199, 200, "cosine_annealing", anneal_epochs_ratio=1.05) == pytest.approx(last)
    assert 0 < last < 0.01
    assert lr_factor(50, 100, "cosine_annealing") == pytest.approx(0.5)  # ratio 1: zero at the end


def test_warm_up_then_schedule_as_usb_and_fixmatch_unchanged_without_it():
    assert [lr_factor(k, 100, "cosine", warmup_steps=4) for k in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert lr_factor(52, 100, "cosine", warmup_steps=4) == pytest.approx(math.cos(7 * math.pi / 16 * 48 / 96))
    assert all(lr_factor(k, 100, "cosine") == cosine_factor(k, 100) for k in range(101))
    assert lr_factor(2, 100, "none", warmup_steps=4) == 0.5 and lr_factor(50, 100, "none", warmup_steps=4) == 1.0


def test_a_fit_follows_the_configured_schedule_step_by_step():
    class RecordLr(L.Callback):
        def __init__(self):
            self.lrs = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    dm = ActiveDataModule("digits", batch_size=4, uratio=0, steps_per_epoch=10, num_workers=0)
    dm.setup()
    dm.pool.label(list(range(20)), dm.ground_truth(list(range(20))))
    model = Supervised(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4}, lr=0.2,
                       scheduler="cosine_annealing", anneal_epochs_ratio=1.05, warmup_steps=4)
    record = RecordLr()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, use_distributed_sampler=False,
                        enable_model_summary=False, callbacks=[record])
    trainer.fit(model, datamodule=dm)
    expected = [0.2 * k / 4 for k in range(4)] + \
        [0.2 * 0.5 * (1 + math.cos(math.pi * (k - 4) / (16 * 1.05))) for k in range(4, 20)]
    assert record.lrs == pytest.approx(expected)


def test_invalid_optimizer_settings_are_refused():
    with pytest.raises(ValueError):
        Supervised(backbone="small_cnn", num_classes=3, in_channels=1, layer_decay=1.5)
    with pytest.raises(ValueError):
        Supervised(backbone="small_cnn", num_classes=3, in_channels=1, anneal_epochs_ratio=0.9)


# ------------------------------------------------------------------ paper configs
PAPER_VALUES = {
    "configs/as3l_cifar10.yaml": [
        "class_path: al_lightning.methods.flexmatch.FlexMatch", "backbone: wrn28_2", "threshold: 0.95",
        "lambda_u: 1.0", "thresh_warmup: true", "lr: 0.03", "momentum: 0.9", "nesterov: true",
        "weight_decay: 0.0005", "optimizer: sgd", "scheduler: cosine", "ema_decay: 0.999",
        "class_path: al_lightning.methods.parts.prior_guidance.PriorGuidance", "switch_step: 61440",
        "features: pretrained", "finetune: true", "pretrained: runs/pretrain_simsiam_cifar10/version_0",
        "class_path: al_lightning.strategies.AS3L", "runs: 6", "finetune_epochs: 40",
        "dataset: cifar10", "batch_size: 64", "uratio: 7", "steps_per_epoch: 1024",
        "max_epochs: 1024", "rounds: 0", "initial_size: 10"],
    "configs/usl_cifar10.yaml": [
        "class_path: al_lightning.methods.FixMatch", "backbone: wrn28_2", "threshold: 0.95", "lambda_u: 1.0",
        "lr: 0.03", "momentum: 0.9", "nesterov: true", "weight_decay: 0.001", "scheduler: cosine",
        "ema_decay: 0.999", "pretrained: null", "dataset: cifar10", "batch_size: 64", "uratio: 7",
        "steps_per_epoch: 1024", "max_epochs: 1024", "rounds: 0", "initial_size: 40",
        "class_path: al_lightning.strategies.USL", "features: runs/pretrain_simclr_cifar10/version_0", "k: 400",
        "m_reg: 0.9", "iterations: 10", "distance: squared"],
    "configs/usl_t_cifar10.yaml": [
        "class_path: al_lightning.methods.FixMatch", "backbone: wrn28_2", "weight_decay: 0.001",
        "scheduler: cosine", "pretrained: null", "dataset: cifar10", "max_epochs: 1024", "rounds: 0",
        "initial_size: 40", "class_path: al_lightning.strategies.USLT",
        "features: runs/pretrain_simclr_cifar10/version_0", "k: 20", "lam: 0.5", "alpha: 2.5",
        "temperature: 0.5", "momentum: 0.5", "threshold: 0.0", "heads: 3", "epochs: 100", "batch_size: 2048",
        "lr: 0.0001"],
    "configs/fa_cifar100.yaml": [
        "class_path: al_lightning.methods.freematch.FreeMatch", "backbone: timm:vit_small_patch16_224",
        "img_size: 32", "patch_size: 2", "drop_path_rate: 0.2",
        "weights: pretrained/vit_small_patch2_32_mlp_im_1k_32.pth", "optimizer: adamw", "lr: 0.0005",
        "layer_decay: 0.5", "weight_decay: 0.0005", "scheduler: cosine", "warmup_steps: 5120",
        "ema_decay: 0.0", "ema_p: 0.999", "lambda_e: 0.001", "lambda_u: 1.0",
        "class_path: al_lightning.methods.parts.feature_realignment.FeatureRealignment", "queue_length: 10",
        "dataset: cifar100", "batch_size: 8", "uratio: 1", "steps_per_epoch: 1024", "max_epochs: 200",
        "rounds: 1", "initial_per_class: 1", "budget: 100", "class_path: al_lightning.strategies.CoreSet"],
    "configs/rethinking_mnist.yaml": [
        "class_path: al_lightning.methods.lp_semi.LPSemi", "backbone: cnn13", "warmup_epochs: 1", "k: 50",
        "alpha: 0.99", "gamma: 3.0", "graph: union", "unlabeled_epoch_fraction: 0.5", "lr: 0.2", "momentum: 0.9",
        "nesterov: true", "weight_decay: 0.0002", "optimizer: sgd", "scheduler: cosine_annealing",
        "anneal_epochs_ratio: 1.05", "ema_decay: 0.0", "dataset: mnist", "download: true", "batch_size: 10",
        "unlabeled_batch_size: 54", "max_epochs: 200", "rounds: 4", "initial_per_class: 1", "budget: 10",
        "class_path: al_lightning.strategies.Random", "pretrained: runs/pretrain_deepcluster_mnist/version_0"],
    "configs/rethinking_cifar10.yaml": [
        "class_path: al_lightning.methods.lp_semi.LPSemi", "backbone: cnn13", "warmup_epochs: 1", "k: 50",
        "alpha: 0.99", "gamma: 3.0", "graph: union", "unlabeled_epoch_fraction: 0.5", "lr: 0.2", "momentum: 0.9",
        "nesterov: true", "weight_decay: 0.0002", "optimizer: sgd", "scheduler: cosine_annealing",
        "anneal_epochs_ratio: 1.05", "ema_decay: 0.0", "dataset: cifar10", "batch_size: 50",
        "unlabeled_batch_size: 78", "max_epochs: 200", "rounds: 4", "initial_per_class: 10", "budget: 100",
        "class_path: al_lightning.strategies.Random", "pretrained: runs/pretrain_deepcluster_cifar10/version_0"],
}


@pytest.mark.parametrize("config", sorted(PAPER_VALUES))
def test_print_config_shows_the_paper_values(config, capsys):
    with pytest.raises(SystemExit):
        ActiveLearningCLI(args=["fit", "--config", config, "--print_config"])
    lines = {line.strip().removeprefix("- ") for line in capsys.readouterr().out.splitlines()}
    missing = [value for value in PAPER_VALUES[config] if value not in lines]
    assert not missing, missing


def test_fa_config_builds_usb_vit_small_from_scratch_with_one_warning_and_usb_layer_decay(caplog):
    """Without USB's weights file the ViT-S/2 trains from scratch, said once; its 14 layer groups
    (stem, 12 blocks, head) get lr 5e-4 * 0.5^(13 - i), as USB's param_groups_layer_decay."""
    with caplog.at_level(logging.WARNING):
        cli = ActiveLearningCLI(args=["--config", "configs/fa_cifar100.yaml", "--trainer.logger", "false"], run=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "weights" in r.getMessage()]
    assert warnings == ["weights file pretrained/vit_small_patch2_32_mlp_im_1k_32.pth not found: "
                        "training vit_small_patch16_224 from scratch"]
    vit = cli.model.model.model
    assert vit.pos_embed.shape == (1, 257, 384) and len(vit.blocks) == 12 and vit.head.out_features == 100
    lr_of = {id(p): g["lr"] for g in cli.model.layer_decay_groups() for p in g["params"]}
    names = dict(vit.named_parameters())
    assert lr_of[id(names["head.weight"])] == pytest.approx(5e-4)
    assert lr_of[id(names["blocks.11.attn.qkv.weight"])] == pytest.approx(5e-4 * 0.5)
    assert lr_of[id(names["blocks.0.attn.qkv.weight"])] == pytest.approx(5e-4 * 0.5**12)
    assert lr_of[id(names["patch_embed.proj.weight"])] == pytest.approx(5e-4 * 0.5**13)


@pytest.mark.parametrize("config, channels",
                         [("configs/rethinking_mnist.yaml", 1), ("configs/rethinking_cifar10.yaml", 3)])
def test_rethinking_configs_build_cnn13_with_the_datasets_channels(config, channels):
    cli = ActiveLearningCLI(args=["--config", config, "--trainer.logger", "false",
                                  "--model.init_args.pretrained", "null"], run=False)
    backbone = cli.model.model
    assert isinstance(backbone, CNN13) and backbone.fc.out_features == 10
    assert backbone.features[0].in_channels == channels
