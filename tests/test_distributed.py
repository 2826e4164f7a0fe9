"""DistributedDataParallel (gloo, 2 CPU processes) gives the gradients of one
process on the whole batch."""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastrnn


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = fastrnn.LSTM(6, 10, num_layers=2, backend="reference")
        self.head = torch.nn.Linear(10, 3)

    def forward(self, x, y):
        out, _ = self.rnn(x)
        return torch.nn.functional.cross_entropy(self.head(out).reshape(-1, 3), y.reshape(-1))


def _net():
    torch.manual_seed(1)
    return Net()


def _worker(rank, world, init_file, x, y, result_file):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = torch.nn.parallel.DistributedDataParallel(_net())
        n = x.shape[1] // world
        model(x[:, rank * n:(rank + 1) * n], y[:, rank * n:(rank + 1) * n]).backward()
        torch.save([p.grad for p in model.parameters()], f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_matches_single_process(tmp_path):
    torch.manual_seed(5)
    x = torch.randn(7, 8, 6)
    y = torch.randint(0, 3, (7, 8))
    single = _net()
    single(x, y).backward()
    expect = [p.grad for p in single.parameters()]
    result = str(tmp_path / "grads.pt")
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), x, y, result), nprocs=2, join=True,
                       start_method="spawn")
    for rank in range(2):
        got = torch.load(f"{result}.{rank}")
        assert len(got) == len(expect)
        for a, b in zip(got, expect):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (a - b).abs().max()
