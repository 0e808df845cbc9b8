"""The proposed strategy in PyTorch (benchmarks/frameworks/torch_proposed.py) against plain float32 autograd.

Needs torch (the `frameworks` extra; CI has none and skips). The reference is
the same network written with ordinary autograd ops in float32: the l1
batchnorm's exact derivative, the STE as a saved float32 input, dW in float32.
The proposed path differs from it only by the strategy's quantisation (float16
storage, sign(n) x mean|n| in batchnorm's backward, sign(dW)), so forward
values agree to float16 precision and the weight gradients' signs mostly agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "frameworks"))
from torch_model import SignSTE, build_torch_model, classes, input_shape  # noqa: E402
from torch_proposed import (  # noqa: E402
    EPS, L1BatchNorm, PackedConv2d, PackedLinear, PackedSign, ProposedLayers, ProposedTrainer, pack_signs, unpack_signs,
)

from bnncost.layers.graph import graph_of  # noqa: E402


def test_packing_round_trips_and_takes_one_bit():
    x = torch.randn(3, 5, 7)
    bits = pack_signs(x >= 0)
    assert bits.dtype == torch.uint8 and bits.numel() == (3 * 5 * 7 + 7) // 8
    assert torch.equal(unpack_signs(bits, x.shape, torch.float32), torch.where(x >= 0, 1.0, -1.0))


def _reference(model, x):
    """The same modules' forward with plain float32 autograd ops (exact l1 batchnorm, float32 STE)."""
    for m in model:
        if isinstance(m, PackedLinear):
            w = m.ref_weight
            x = F.linear(x, SignSTE.apply(w) if m.binary else w)
        elif isinstance(m, PackedConv2d):
            w = m.ref_weight
            x = F.conv2d(x, SignSTE.apply(w) if m.binary else w, None, m.stride, m.padding, groups=m.groups)
        elif isinstance(m, L1BatchNorm):
            dims = (0, 2, 3) if x.dim() == 4 else (0,)
            view = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
            d = x - x.mean(dims, keepdim=True)
            x = d / (d.abs().mean(dims, keepdim=True) + EPS) + m.ref_beta.view(view)
        elif isinstance(m, PackedSign):
            x = SignSTE.apply(x)
        else:
            x = m(x)
    return x


GROUPED = Path(__file__).resolve().parent / "data" / "grouped-cnn.yaml"  # a depthwise and a grouped binary conv


@pytest.mark.parametrize("name,batch", [("digits-mlp", 64), ("digits-cnn", 32), (str(GROUPED), 32)])
def test_gradients_agree_with_float32_autograd_up_to_the_quantisation(name, batch):
    torch.manual_seed(0)
    graph = graph_of(name)
    model = build_torch_model(graph, ProposedLayers())
    ProposedTrainer(model)  # makes the model float16, as a training run does
    for m in model:
        if isinstance(m, (PackedLinear, PackedConv2d)):
            m.ref_weight = m.weight.detach().float().requires_grad_()
        if isinstance(m, L1BatchNorm):
            m.ref_beta = (m.beta.detach().float() + 0.1 * torch.randn(m.beta.shape)).requires_grad_()
            m.beta.data.copy_(m.ref_beta.detach())
    x = torch.randn((batch, *input_shape(graph)))
    y = torch.randint(0, classes(graph), (batch,))
    ref_loss = F.cross_entropy(_reference(model, x), y)
    ref_loss.backward()
    loss = F.cross_entropy(model(x.half()).float(), y)
    loss.backward()
    assert abs(loss.item() - ref_loss.item()) < 0.02 * ref_loss.item(), (loss.item(), ref_loss.item())
    agree, cosine = [], []
    for m in model:
        if isinstance(m, (PackedLinear, PackedConv2d)):
            bits = unpack_signs(m.grad_bits, m.weight.shape, torch.float32)
            ref = torch.where(m.ref_weight.grad >= 0, 1.0, -1.0)
            g = m.ref_weight.grad.abs()
            agree.append(((bits == ref) * g).sum().item() / g.sum().item())  # of the gradient's magnitude
        if isinstance(m, L1BatchNorm):
            cosine.append(F.cosine_similarity(m.beta.grad.float(), m.ref_beta.grad, dim=0).item())
    print(name, [round(a, 3) for a in agree], [round(c, 3) for c in cosine])
    assert cosine[-1] > 0.999  # the last batchnorm's dbeta = sum(dY) of the loss: float16 rounding only
    # below it, the l1 batchnorm backward's approximation (sign(n) x mean|n|, d spread / dx dropped) enters:
    assert min(cosine) > 0.9 and min(agree) > 0.9


@pytest.mark.parametrize("name,batch", [("digits-mlp", 64), ("digits-cnn", 32)])
def test_loss_decreases(name, batch):
    torch.manual_seed(0)
    graph = graph_of(name)
    trainer = ProposedTrainer(build_torch_model(graph, ProposedLayers()))
    x = torch.randn((batch, *input_shape(graph)), dtype=torch.float16)
    y = torch.randint(0, classes(graph), (batch,))
    losses = []
    for _ in range(6):
        trainer.zero_grad()
        losses.append(trainer.step(x, y).item())
    assert losses[-1] < 0.8 * losses[0], losses
    state = next(iter(trainer.opt.state.values()))
    assert state["exp_avg"].dtype == torch.float16  # float16 Adam moments
    assert all(p.dtype == torch.float16 for p in trainer.model.parameters())
    assert all(abs(w).max() <= 1 for w in trainer.latent)
