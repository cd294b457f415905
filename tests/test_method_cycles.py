"""Every method, composition and CEAL runs two real (tiny) cycles on digits from a config: the
paper configs themselves, with only the dataset, backbone and budget scaled down. The label-free
pipelines (AS3L, USL, USL-T, Rethinking with PRE) start from a real (tiny) pre-training run on
digits, as their two documented commands do."""

import json

import pytest
import torch

from al_lightning.cli import ActiveLearningCLI
from al_lightning.data import ActiveDataModule
from al_lightning.models import create_backbone
from al_lightning.pretrain.outputs import load_features
from al_lightning.strategies import AS3L, USL, USLT, AcquisitionContext

TINY = ["--data.dataset", "digits", "--data.steps_per_epoch", "2", "--trainer.max_epochs", "1",
        "--loop.rounds", "1", "--loop.budget", "6", "--data.num_workers", "0",
        "--model.init_args.backbone", "small_cnn", "--model.init_args.backbone_kwargs", '{"width": 4}']
FA = '[{"class_path": "al_lightning.methods.parts.FeatureRealignment"}]'
PPL = '[{"class_path": "al_lightning.methods.parts.PriorGuidance", "init_args": {"features": "pixels", "switch_step": 1}}]'

#: the pre-training each pipeline config points at, run once per module on digits
PRETRAIN = {"simsiam": "SimSiam", "simclr": "SimCLR", "deepcluster": "DeepCluster"}


@pytest.fixture(scope="module")
def pretrained_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    runs = {}
    for name, method in PRETRAIN.items():
        ActiveLearningCLI(args=["pretrain", "--config", f"configs/pretrain_{name}_mnist.yaml",
                                "--data.dataset", "digits", "--data.batch_size", "32", "--data.num_workers", "0",
                                "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                                "--trainer.enable_progress_bar", "false",
                                "--model.init_args.backbone", "small_cnn",
                                "--model.init_args.backbone_kwargs", '{"width": 4}',
                                "--trainer.logger.init_args.save_dir", str(root),
                                "--trainer.logger.init_args.name", name])
        runs[name] = root / name / "version_0"
    return runs


CASES = {
    "supervised": ("assl_digits", ["--model.class_path", "al_lightning.methods.Supervised",  # ASSL needs a strong view
                                   "--loop.strategy", "al_lightning.strategies.Entropy"]),
    "fixmatch": ("assl_digits", []),
    "flexmatch": ("assl_digits", ["--model.class_path", "al_lightning.methods.FlexMatch"]),
    "freematch": ("assl_digits", ["--model.class_path", "al_lightning.methods.FreeMatch"]),
    "fixmatch+fa": ("assl_digits", ["--model.init_args.parts", FA]),
    "freematch+fa": ("fa_cifar100", ["--model.init_args.layer_decay", "null", "--data.batch_size", "4",
                                     "--data.uratio", "2"]),
    "as3l: simsiam -> as3l selection -> flexmatch+ppl": ("as3l_cifar10", [
        "--data.batch_size", "4", "--data.uratio", "2", "--model.init_args.pretrained", "{simsiam}"]),
    "usl: simclr -> usl selection -> fixmatch": ("usl_cifar10", [
        "--loop.initial_strategy.init_args.features", "{simclr}"]),
    "usl_t: simclr -> usl-t selection -> fixmatch": ("usl_t_cifar10", [
        "--loop.initial_strategy.init_args.features", "{simclr}"]),
    "freematch+ppl": ("assl_digits", ["--model.class_path", "al_lightning.methods.FreeMatch",
                                      "--model.init_args.parts", PPL]),
    "lp_semi (rethinking: deepcluster -> lp_semi)": ("rethinking_mnist", [
        "--trainer.max_epochs", "2", "--data.unlabeled_batch_size", "16",
        "--model.init_args.unlabeled_epoch_fraction", "0.02", "--model.init_args.pretrained", "{deepcluster}"]),
    "lp_semi+jlp": ("rethinking_cifar10", ["--model.init_args.pretrained", "null",
                                           "--loop.strategy", "al_lightning.strategies.JLP",
                                           "--model.init_args.warmup_epochs", "0", "--data.batch_size", "8",
                                           "--data.unlabeled_batch_size", "8",
                                           "--model.init_args.unlabeled_epoch_fraction", "0.01"]),
    "supervised+ceal": ("assl_digits", ["--model.class_path", "al_lightning.methods.Supervised",
                                        "--loop.strategy", "al_lightning.strategies.CEAL"]),
}


#: pipelines whose initial labels come from a single-shot strategy: (strategy, pre-training run, budget)
SINGLE_SHOT = {"as3l: simsiam -> as3l selection -> flexmatch+ppl": (AS3L(features="pretrained"), "simsiam", 10),
               "usl: simclr -> usl selection -> fixmatch": (USL(features="pretrained"), "simclr", 40),
               "usl_t: simclr -> usl-t selection -> fixmatch": (USLT(features="pretrained"), "simclr", 40)}


def single_shot_pick(strategy, run, budget):
    """What the strategy picks from an empty digits pool on the run's cached features (loop seed 0)."""
    dm = ActiveDataModule("digits", num_workers=0)
    dm.setup()
    context = AcquisitionContext(dm.pool, create_backbone("small_cnn", 10, 1, width=4), dm.inference_dataloader,
                                 torch.device("cpu"), seed=0, pretrained_features=load_features(run)[1],
                                 model_is_random=True)
    return strategy.select(context, budget)


@pytest.mark.parametrize("case", list(CASES))
def test_method_runs_two_cycles_from_its_config(tmp_path, case, request):
    config, extra = CASES[case]
    placeholders = {f"{{{name}}}" for name in PRETRAIN}
    runs = request.getfixturevalue("pretrained_runs") if placeholders & set(extra) else {}
    extra = [arg.format(**runs) if arg in placeholders else arg for arg in extra]
    ActiveLearningCLI(args=["fit", "--config", f"configs/{config}.yaml", *TINY, *extra,
                            "--trainer.logger.init_args.save_dir", str(tmp_path),
                            "--trainer.logger.init_args.name", "run"])
    run = tmp_path / "run" / "version_0"
    selections = json.loads((run / "selections.json").read_text())
    assert len(selections["1"]) == 6 and set(selections["1"]).isdisjoint(selections["0"])
    rows = (run / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3
    if case.startswith(("as3l", "flexmatch", "freematch", "lp_semi")) or "+fa" in case:
        state = torch.load(run / "method_state" / "cycle_1.pt")
        assert state, "a stateful method saves its per-sample state with the cycle"
    if case in SINGLE_SHOT:  # the initial labels are the strategy's pick on the pre-training run's features
        strategy, run_name, budget = SINGLE_SHOT[case]
        assert sorted(selections["0"]) == sorted(single_shot_pick(strategy, runs[run_name], budget).tolist())
    if case == "supervised+ceal":
        pseudo = json.loads((run / "pseudo_labels" / "for_cycle_1.json").read_text())
        assert set(pseudo["ids"]).isdisjoint(selections["0"] + selections["1"])
        assert not (run / "pseudo_labels" / "for_cycle_2.json").exists()
