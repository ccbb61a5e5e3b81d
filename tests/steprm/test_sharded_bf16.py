"""Two ranks in bf16 mixed precision, as on GPUs: FSDP2 all-gathers bf16 weights and reduce-scatters fp32
gradients between the ranks (gloo, two processes), against the one-actor model autocasting its fp32 weights to bf16.

The Ray tests of the sharded service run fp32 (CPU ranks there do not autocast); this is the one place the bf16
collectives between ranks run. Tolerance: bf16 rounding, 2e-2 absolute on scores of order 1 (measured: ~1e-3),
1e-3 on the loss."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # two processes importing torch and building the model: ~30 s on 2 cores

SETTINGS = dict(objective="implicit", online=True, lr=1e-3, beta=0.5, reference="frozen", device="cpu",
                micro_batch_size=3, autocast_bf16=True)
TOL = 2e-2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, queue) -> None:
    sys.path.insert(0, str(REPO))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from spa_reward.steprm.sharded import ShardedStepRewardModel
        from tests.steprm.helpers import synthetic_items, tiny_backbone

        settings = dict(SETTINGS, backbone_config=tiny_backbone())
        items, _ = synthetic_items(8, seed=0)
        model = ShardedStepRewardModel(settings)
        before = model.score(items)
        metrics = model.update(items)
        after = model.score(items)
        queue.put((rank, "ok", before, after, metrics["steprm/loss"]))
    except Exception:  # noqa: BLE001 - reported to the test
        import traceback

        queue.put((rank, "error", traceback.format_exc()[-3000:], None, None))
    finally:
        dist.destroy_process_group()


def test_two_bf16_ranks_score_and_update_like_the_one_actor_model():
    from spa_reward.steprm.service import StepRewardModel
    from tests.steprm.helpers import synthetic_items, tiny_backbone

    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        rank, status, before, after, loss = queue.get(timeout=600)
        assert status == "ok", f"rank {rank}:\n{before}"
        results[rank] = (before, after, loss)
    for p in procs:
        p.join(60)

    one = StepRewardModel(dict(SETTINGS, backbone_config=tiny_backbone()))
    items, _ = synthetic_items(8, seed=0)
    want_before, want_loss, want_after = one.score(items), one.update(items)["steprm/loss"], one.score(items)
    for rank, (before, after, loss) in results.items():  # every rank answers the same, and as the one model
        for got, want in ((before, want_before), (after, want_after)):
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert g == pytest.approx(w, abs=TOL), (rank, g, w)
        assert loss == pytest.approx(want_loss, abs=1e-3), rank
    moved = max(abs(a - b) for ra, rb in zip(want_before, want_after) for a, b in zip(ra, rb))
    assert moved > 0  # the update changed the scores (fp32 master weights under bf16 compute)
