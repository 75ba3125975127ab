"""Two gloo processes on the CPU give the same loss and gradients as one process on the concatenated batch, also when
each process splits its rows into micro-batches (gradient accumulation)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from clipcore.config import LossConfig
from clipcore.train.loop import backward_step, compute_loss
from clipcore.train.losses import LOSSES, REG_FORMS

N, D_IN, D = 8, 6, 4


class Towers(torch.nn.Module):
    """Two linear towers plus the learnable scale and bias compute_loss reads."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(D_IN, D)
        self.text = torch.nn.Linear(D_IN, D)
        self.log_scale = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-1.0, dtype=torch.float64))
        self.double()

    def forward(self, x, y, normalize=True):
        image, text = self.image(x), self.text(y)
        return (F.normalize(image, dim=-1), F.normalize(text, dim=-1)) if normalize else (image, text)

    def scale(self):
        return self.log_scale.exp()


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, D_IN, generator=g, dtype=torch.float64), torch.randn(N, D_IN, generator=g,
                                                                                 dtype=torch.float64)


# every objective, and clip_reg's regularizer in each form (sq_euclid_raw reads the projections before normalization)
CONFIGS = {**{name: LossConfig(name=name) for name in LOSSES},
           **{f"clip_reg_{form}": LossConfig(name="clip_reg", reg_weight=0.5, reg_form=form) for form in REG_FORMS}}


def loss_and_grads(model, forward, x, y, name, micro_batches=None):
    """The plain loss.backward() of one batch, or training's backward_step with `micro_batches`."""
    if micro_batches is None:
        image_proj, text_proj = forward(x, y, normalize=False)
        loss = compute_loss(model, image_proj, text_proj, CONFIGS[name])
        loss.backward()
    else:
        loss, _, _ = backward_step(forward, model, x, y, CONFIGS[name], micro_batches)
    return loss.detach(), {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                           for n, p in model.named_parameters()}


def worker(rank: int, world: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, y = data()
    rows = slice(rank * N // world, (rank + 1) * N // world)
    for name, config in CONFIGS.items():
        for micro_batches in (None, 2):
            model = Towers()
            model.logit_bias.requires_grad_(LOSSES[config.name].uses_bias)  # DDP needs every trainable param used
            ddp = DistributedDataParallel(model)  # averages gradients across processes, as in training
            loss, grads = loss_and_grads(model, ddp, x[rows], y[rows], name, micro_batches)
            dist.all_reduce(loss)
            if rank == 0:
                results[name, micro_batches] = (loss / world, grads)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    with mp.Manager() as manager:
        results = manager.dict()
        init = tmp_path_factory.mktemp("gloo") / "init"
        mp.spawn(worker, args=(2, str(init), results), nprocs=2, join=True)
        return dict(results)


@pytest.mark.parametrize("micro_batches", [None, 2], ids=["one_batch", "two_micro_batches"])
@pytest.mark.parametrize("name", CONFIGS)
def test_two_processes_match_one(two_process_results, name, micro_batches):
    model = Towers()
    model.logit_bias.requires_grad_(LOSSES[CONFIGS[name].name].uses_bias)
    x, y = data()
    expected_loss, expected_grads = loss_and_grads(model, model, x, y, name)  # one process, plain backward
    loss, grads = two_process_results[name, micro_batches]
    assert torch.allclose(loss, expected_loss, atol=1e-10), (loss, expected_loss)
    for key, grad in expected_grads.items():
        assert torch.allclose(grads[key], grad, atol=1e-10), key
