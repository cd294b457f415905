"""Two CPU processes under DDP (gloo): every rank must hold the identical pool and score state."""

import re
import socket

import pytest
import torch
from ddp_launch import run_script

from al_lightning.methods.inference import OUTPUTS, pool_inference
from al_lightning.models import create_backbone
from al_lightning.scoring.online import OnlineScoreState

pytestmark = pytest.mark.ddp


def test_online_scores_are_identical_on_both_ranks_and_equal_a_replay(tmp_path):
    run_script("tests/ddp_scoring_fit.py", str(tmp_path))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name in OnlineScoreState.FIELDS:
        assert torch.equal(rank0["state"][name], rank1["state"][name]), name
    stream = rank0["stream"]
    assert len(stream) == 6 and all(len(step["index"]) == 2 * 12 for step in stream)  # 2 ranks x 4 x 3
    replay = OnlineScoreState(rank0["state"]["size"])
    for step in stream:
        replay.update(step["index"], step["u"], step["i"], step["pred"], step["confidence"])
    for name in OnlineScoreState.FIELDS:
        assert torch.equal(getattr(replay, name), rank0["state"][name]), name
    assert int(replay.seen.sum()) == 6 * 24


def test_cli_under_ddp_selects_identically_on_both_ranks(tmp_path):
    out = run_script("-m", "al_lightning.cli", "fit", "--config", "configs/assl_digits.yaml",
                     "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                     "--trainer.logger.init_args.save_dir", str(tmp_path), "--loop.rounds", "1",
                     "--data.steps_per_epoch", "4", "--trainer.max_epochs", "1", "--data.batch_size", "8")
    # the ranks share one stdout, so a line may run into the other rank's text: match the digest exactly
    digests = re.findall(r"\[rank (\d)\] cycle (\d) pool digest ([0-9a-f]{16})", out)
    by_cycle = {}
    for rank, cycle, digest in digests:
        by_cycle.setdefault(cycle, {})[rank] = digest
    assert set(by_cycle) == {"0", "1"}
    for cycle, ranks in by_cycle.items():
        assert set(ranks) == {"0", "1"} and len(set(ranks.values())) == 1, (cycle, ranks)
    run_dir = tmp_path / "assl_digits" / "version_0"
    assert (run_dir / "results.csv").read_text().count("\n") == 3


def test_pool_inference_gathers_every_output_identically_on_both_ranks_in_id_order(tmp_path):
    """Embeddings, logits and the per-sample statistics (float64 entropy, int64 class) of a pass
    sharded over two ranks equal one process's pass, dtypes kept, also when a rank holds no id."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    run_script("tests/ddp_pool_inference.py", str(tmp_path), str(port))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    model = create_backbone("small_cnn", num_classes=5, in_channels=1, width=4)
    model.load_state_dict(rank0["model"])
    images = rank0["images"]

    def loader_for(ids):
        return [{"plain": images[torch.as_tensor(ids)]}]

    for case, ids in (("odd", rank0["ids"]), ("one", rank0["ids"][:1])):
        expected = pool_inference(model, loader_for, ids, torch.device("cpu"), OUTPUTS)
        for name in OUTPUTS:
            a, b = rank0[case][name], rank1[case][name]
            assert torch.equal(a, b) and a.dtype == expected[name].dtype and a.shape == expected[name].shape, name
            assert torch.allclose(a.double(), expected[name].double(), atol=1e-5), (case, name)
