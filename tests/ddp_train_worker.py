"""One process of the DistributedDataParallel test (``test_training_fast_paths``), launched with
``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_train_worker.py OUT``: trains
the tiny net with gloo on the CPU and saves this rank's final weights as ``OUT/rank<R>.pt``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agegender.training import (BatchPlan, TrainBatches, Trainer, TrainOptions, build_net,  # noqa: E402
                                init_distributed, initialise, read_solver_config, read_train_val)
from agegender.training.distributed import shutdown_distributed  # noqa: E402
from tests.training_nets import tiny_resident  # noqa: E402


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    assert dist is not None and dist.backend == "gloo"
    train_val, solver_file = out / "train_val.prototxt", out / "solver.prototxt"
    solver = read_solver_config(solver_file)
    net = build_net(read_train_val(train_val), train_val, input_shapes={"data": (4, 3, 10, 10)})
    initialise(net, None, seed=0)
    dataset = tiny_resident()
    plan = BatchPlan(len(dataset), 4, iter_size=solver.iter_size, world_size=dist.world_size, rank=dist.rank, seed=0)
    trainer = Trainer(net, solver, TrainBatches(dataset, plan), out / "run", dist=dist,
                      options=TrainOptions(device="cpu", handle_signals=False))
    trainer.run()
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, out / f"rank{dist.rank}.pt")
    shutdown_distributed(dist)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
