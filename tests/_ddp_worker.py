"""Worker for the data-parallel test: ``python -m torch.distributed.run --nproc_per_node 2 _ddp_worker.py OUT``
(or plain ``python _ddp_worker.py OUT`` for the one-process reference).

Trains a tiny MLP on the gmm toy set with the same global batch; then checks that every rank
ends with the same weights (DDP kept the replicas in sync) and rank 0 writes the per-step loss
history to OUT/history.json.
"""

import json
import sys

import torch

torch.set_num_threads(1)


def main(out: str, steps: int = 60, seed: int = 0) -> None:
    from scoresde.data import load_dataset
    from scoresde.model import ScoreModel
    from scoresde.nets import build_net
    from scoresde.sde import VPSDE
    from scoresde.train import TrainConfig, Trainer

    torch.manual_seed(0)
    net = build_net("mlp", dim=2, hidden=32, depth=1, emb_dim=16)
    cfg = TrainConfig(steps=steps, batch_size=256, lr=3e-3, warmup=10, log_every=1, ckpt_every=0, progress=False,
                      verbose=False, seed=seed)
    tr = Trainer(ScoreModel(net, VPSDE(), "eps"), load_dataset("gmm", n=4096, seed=0), cfg, out=out)
    hist = tr.fit()
    flat = torch.cat([p.detach().flatten() for p in tr.net.parameters()])
    if tr.world > 1:
        import torch.distributed as dist

        gathered = [torch.zeros_like(flat) for _ in range(tr.world)]
        dist.all_gather(gathered, flat)
        for r, g in enumerate(gathered):
            assert torch.equal(g, flat), f"rank {r} ended with different weights than rank {tr.rank}"
    if tr.is_main:
        with open(f"{out}/history.json", "w") as fh:
            json.dump({"history": hist, "world": tr.world}, fh)
    tr.close()


if __name__ == "__main__":
    main(sys.argv[1], seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
