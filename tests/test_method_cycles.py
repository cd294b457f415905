"""Every method, composition and CEAL runs two real (tiny) cycles on digits from a config: the
paper configs themselves, with only the dataset, backbone and budget scaled down."""

import json

import pytest
import torch

from al_lightning.cli import ActiveLearningCLI

TINY = ["--data.dataset", "digits", "--data.steps_per_epoch", "2", "--trainer.max_epochs", "1",
        "--loop.rounds", "1", "--loop.budget", "6", "--data.num_workers", "0",
        "--model.init_args.backbone", "small_cnn", "--model.init_args.backbone_kwargs", '{"width": 4}']
FA = '[{"class_path": "al_lightning.methods.parts.FeatureRealignment"}]'
PPL = '[{"class_path": "al_lightning.methods.parts.PriorGuidance", "init_args": {"features": "pixels", "switch_step": 1}}]'

CASES = {
    "supervised": ("assl_digits", ["--model.class_path", "al_lightning.methods.Supervised"]),
    "fixmatch": ("assl_digits", []),
    "flexmatch": ("assl_digits", ["--model.class_path", "al_lightning.methods.FlexMatch"]),
    "freematch": ("assl_digits", ["--model.class_path", "al_lightning.methods.FreeMatch"]),
    "fixmatch+fa": ("assl_digits", ["--model.init_args.parts", FA]),
    "freematch+fa": ("fa_cifar100", ["--model.init_args.layer_decay", "null", "--data.batch_size", "4",
                                     "--data.uratio", "2"]),
    "flexmatch+ppl": ("as3l_cifar10", ["--data.batch_size", "4", "--data.uratio", "2"]),
    "freematch+ppl": ("assl_digits", ["--model.class_path", "al_lightning.methods.FreeMatch",
                                      "--model.init_args.parts", PPL]),
    "lp_semi": ("rethinking_mnist", ["--trainer.max_epochs", "2", "--data.unlabeled_batch_size", "16",
                                     "--model.init_args.unlabeled_epoch_fraction", "0.02"]),
    "lp_semi+jlp": ("rethinking_cifar10", ["--loop.strategy", "al_lightning.strategies.JLP",
                                           "--model.init_args.warmup_epochs", "0", "--data.batch_size", "8",
                                           "--data.unlabeled_batch_size", "8",
                                           "--model.init_args.unlabeled_epoch_fraction", "0.01"]),
    "supervised+ceal": ("assl_digits", ["--model.class_path", "al_lightning.methods.Supervised",
                                        "--loop.strategy", "al_lightning.strategies.CEAL"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_method_runs_two_cycles_from_its_config(tmp_path, case):
    config, extra = CASES[case]
    ActiveLearningCLI(args=["fit", "--config", f"configs/{config}.yaml", *TINY, *extra,
                            "--trainer.logger.init_args.save_dir", str(tmp_path),
                            "--trainer.logger.init_args.name", "run"])
    run = tmp_path / "run" / "version_0"
    selections = json.loads((run / "selections.json").read_text())
    assert len(selections["1"]) == 6 and set(selections["1"]).isdisjoint(selections["0"])
    rows = (run / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3
    if case.startswith(("flexmatch", "freematch", "lp_semi")) or "+fa" in case:
        state = torch.load(run / "method_state" / "cycle_1.pt")
        assert state, "a stateful method saves its per-sample state with the cycle"
    if case == "supervised+ceal":
        pseudo = json.loads((run / "pseudo_labels" / "for_cycle_1.json").read_text())
        assert set(pseudo["ids"]).isdisjoint(selections["0"] + selections["1"])
        assert not (run / "pseudo_labels" / "for_cycle_2.json").exists()
