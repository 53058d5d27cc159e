"""``common.large_buffers_returned``: freed buffers go back to the OS (glibc), in a fresh process each."""
import json
import platform
import subprocess
import sys

import pytest

from unsafe_concepts.errors import UserError
from unsafe_concepts.train import common

CHILD = r"""
import json, sys
import torch
from unsafe_concepts.train import common

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

def churn():
    # buffers of 2 MB freed while small ones allocated between them stay alive: the pattern of an
    # update pass (activations come and go, gradients and saved inputs stay)
    big, small = [], []
    for _ in range(100):
        big.append(torch.ones(512 * 1024))   # 2 MiB
        small.append(torch.ones(4096))       # 16 KiB
    before_free = rss_mb()
    big.clear()
    return before_free, small

threshold, nested = int(sys.argv[1]), sys.argv[2] == "heap"
warm = torch.ones(512 * 1024)  # one buffer mapped and freed: glibc now serves 2 MiB from its heap
del warm
start = rss_mb()
with common.large_buffers_returned(threshold, "cpu"):
    inner = common.heap_buffers("cpu") if nested else common.large_buffers_returned(None)
    with inner:
        before_free, small = churn()
        retained = rss_mb() - start
    after = common._threshold_now[0]
print(json.dumps({"grew": before_free - start, "retained": retained, "restored": after,
                  "outside": common._threshold_now[0]}))
"""


def _run(threshold: int, nested: str = "-") -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(threshold), nested], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_freed_buffers_go_back_to_the_os():
    default, returned = _run(0), _run(1 << 20)
    assert default["grew"] > 150 and returned["grew"] > 150  # 200 MiB were really allocated both times
    # glibc's default keeps most of the freed 2 MiB buffers in its heap (its threshold rises after the
    # first free); with the threshold fixed at 1 MiB each is unmapped when freed
    assert returned["retained"] < 30, returned
    assert default["retained"] > returned["retained"] + 100, (default, returned)
    # generation inside a training step goes back to the heap, and the step's threshold comes back after
    heap = _run(1 << 20, "heap")
    assert heap["retained"] > returned["retained"] + 100, heap
    assert heap["restored"] == 1 << 20 and heap["outside"] is None


def test_threshold_is_validated():
    with pytest.raises(UserError, match="cpu_mmap_threshold"):
        common.TrainConfig(cpu_mmap_threshold=-1).validate()
    with pytest.raises(UserError, match="cpu_mmap_threshold"):
        common.TrainConfig(cpu_mmap_threshold=64 << 20).validate()
    common.TrainConfig(cpu_mmap_threshold=0).validate()  # 0: off


def test_flat_gradients_accumulate_as_autograd_does():
    """Gradients in one flat buffer: the same values as autograd's own, accumulated in place across
    backward passes, zeroed in place, and gone after release; nothing on a GPU."""
    import torch

    torch.manual_seed(0)
    layers = [torch.nn.Linear(6, 4), torch.nn.Linear(4, 3)]
    twin = [torch.nn.Linear(6, 4), torch.nn.Linear(4, 3)]
    for a, b in zip(layers, twin):
        b.load_state_dict(a.state_dict())
    params = [p for layer in layers for p in layer.parameters()]
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    flat = common.flat_gradients(params + [frozen], "cpu")
    assert len(flat) == 1 and flat[0].numel() == sum(p.numel() for p in params)
    assert frozen.grad is None
    start, end = flat[0].data_ptr(), flat[0].data_ptr() + flat[0].numel() * flat[0].element_size()
    assert all(start <= p.grad.data_ptr() < end for p in params)

    def loss(net, x):
        return net[1](torch.tanh(net[0](x))).pow(2).sum()

    x1, x2 = torch.randn(5, 6), torch.randn(7, 6)
    for x in (x1, x2):  # two micro-batches accumulate
        loss(layers, x).backward()
        loss(twin, x).backward()
    for p, q in zip(params, [p for layer in twin for p in layer.parameters()]):
        assert torch.equal(p.grad, q.grad)
        assert start <= p.grad.data_ptr() < end  # still the buffer, not a fresh tensor
    optimizer = torch.optim.SGD(params, lr=0.1)
    common.zero_gradients(optimizer, flat)
    assert float(flat[0].abs().sum()) == 0.0 and all(p.grad is not None for p in params)
    optimizer.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in params)
    assert common.flat_gradients(params, "cuda:0") == []
