"""A memory budget, and the one mechanism that keeps every method inside it: G in chunks.

Everything that sends several latents through the generator at once (VI's reparameterised
particles, posterior draws rendered into images, the reliance map's prior draws) splits them into
chunks whose size follows the budget:

* with gradients (:func:`chunked_grad`): the quantity is a *sum* over items (the ELBO's Monte-Carlo
  average over particles is one), so its gradient with respect to the items' values is computed
  chunk by chunk, each chunk's graph freed before the next is built. The caller then pushes those
  gradients on to its own parameters with one backward pass through the cheap part (the guide's
  reparameterisation) via :func:`surrogate`. The result equals the one-batch gradient up to float
  summation order (tested).
* without gradients (:func:`chunk_ranges` + a ``torch.no_grad`` loop): just a loop over chunks.

The chunk size is ``floor(free / (images per item x bytes per image))``, at least 1, where ``free``
is the budget minus what the process holds now (CPU: resident set; CUDA: allocated), and the bytes
per image are measured once per generator by one probe forward at batch 1 (:func:`footprint`): the
tensors autograd keeps for backward (with gradients), or a few copies of the largest activation
(without). The budget is ``model.max_memory`` (bytes; ``brgm reconstruct --max-memory 8GB``) or,
when unset, :func:`default_budget`: 70 % of what the device has free plus what the process holds.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError

#: room for the activations' gradients and allocator slack during backward, on top of the saved
#: tensors (a margin, not a measurement: docs/memory.md has the peaks measured at 1024 x 1024)
GRAD_SAFETY = 1.5
#: a no-grad forward holds a layer's input, output and a temporary or two at once
EVAL_COPIES = 4
DEFAULT_FRACTION = 0.7
_UNITS = {"": 1, "B": 1, "K": 2 ** 10, "KB": 2 ** 10, "KIB": 2 ** 10, "M": 2 ** 20, "MB": 2 ** 20, "MIB": 2 ** 20,
          "G": 2 ** 30, "GB": 2 ** 30, "GIB": 2 ** 30, "T": 2 ** 40, "TB": 2 ** 40, "TIB": 2 ** 40}


def parse_size(text: str | int | float) -> int:
    """Bytes of a size such as ``"8GB"``, ``"12 GiB"``, ``"500MB"`` or a number of bytes.

    GB and GiB both mean 2^30 bytes (what ``free -g`` and the GPU tools show)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        if m is None or m.group(2).upper() not in _UNITS:
            raise BRGMError(f"a memory size must be a number with an optional unit (e.g. 8GB, 500MB); got {text!r}")
        value, unit = float(m.group(1)), m.group(2).upper()
    if not value > 0:
        raise BRGMError(f"a memory size must be positive; got {text!r}")
    return int(value * _UNITS[unit])


def _meminfo_available() -> Optional[int]:
    """MemAvailable of /proc/meminfo in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def in_use(device: torch.device | str = "cpu") -> int:
    """Bytes the process holds on ``device`` now: CUDA allocated, or the CPU resident set."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # peak, an upper bound


def default_budget(device: torch.device | str = "cpu") -> int:
    """The budget when none is given: what the process holds plus 70 % of what the device has free."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = _meminfo_available() or 8 * 2 ** 30
    return in_use(device) + int(DEFAULT_FRACTION * free)


def budget_of(model) -> int:
    """The budget in bytes that ``model`` runs under: ``model.max_memory`` or :func:`default_budget`."""
    given = getattr(model, "max_memory", None)
    return int(given) if given is not None else default_budget(model.generator.device())


def _blocks(generator) -> list:
    """The modules that activation checkpointing runs one at a time (StyleGAN2's synthesis blocks), or []."""
    net = getattr(generator, "synthesis_network", None)
    if net is None or not hasattr(generator, "checkpoint"):
        return []
    return [getattr(net, f"b{r}") for r in getattr(net, "block_resolutions", [])]


def footprint(generator, checkpointed: Optional[bool] = None) -> tuple[int, int]:
    """Bytes per image of ``generator``: (kept for backward by one forward, its largest activation).

    Measured once per generator (and device) by one forward at batch 1 whose saved tensors are
    counted (``torch.autograd.graph.saved_tensors_hooks``; storages of G's own parameters and
    buffers excluded: they are shared by the batch), and remembered on the generator object.
    ``checkpointed`` (default: the generator's ``checkpoint`` setting): the bytes with activation
    checkpointing per block, i.e. the largest block's saved tensors (re-made during backward, one
    block at a time) plus every block's outputs (kept as the next block's inputs)."""
    device = generator.device()
    ckpt = bool(getattr(generator, "checkpoint", False)) if checkpointed is None else bool(checkpointed)
    memo = getattr(generator, "_brgm_footprint", None)
    if memo is None or memo[0] != str(device):
        memo = (str(device), *_probe(generator))
        object.__setattr__(generator, "_brgm_footprint", memo)
    _, saved, largest, per_block, outputs = memo
    if ckpt and per_block:
        return int(max(per_block) + outputs), int(largest)
    return int(saved), int(largest)


def _probe(generator) -> tuple[int, int, list, int]:
    """(saved bytes, largest activation, saved bytes per block, bytes of the blocks' outputs) at batch 1,
    with checkpointing off."""
    shared = {t.untyped_storage().data_ptr() for t in [*generator.parameters(), *generator.buffers()]}
    seen: dict[int, tuple[int, int]] = {}  # storage -> (bytes, block index)
    blocks, current, outs = _blocks(generator), [-1], [0]

    def pack(t: Tensor) -> Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in shared and st.device == t.device:
            seen[st.data_ptr()] = (max(seen.get(st.data_ptr(), (0, 0))[0], st.nbytes()), current[0])
        return t

    def enter(i):
        return lambda module, args: current.__setitem__(0, i)

    def leave(module, args, out):
        outs[0] += sum(o.numel() * o.element_size() for o in out if isinstance(o, Tensor))

    hooks = [b.register_forward_pre_hook(enter(i)) for i, b in enumerate(blocks)]
    hooks += [b.register_forward_hook(leave) for b in blocks]
    was = bool(getattr(generator, "checkpoint", False))
    if blocks:
        generator.checkpoint = False
    try:
        w = torch.zeros(1, generator.num_ws, generator.w_dim, device=generator.device(), requires_grad=True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            x = generator(w)
    finally:
        for h in hooks:
            h.remove()
        if blocks:
            generator.checkpoint = was
    saved = sum(b for b, _ in seen.values()) or x.numel() * x.element_size()
    largest = max([*(b for b, _ in seen.values()), x.numel() * x.element_size()])
    per_block = [sum(b for b, i in seen.values() if i == k) for k in range(len(blocks))]
    return int(saved), int(largest), per_block, int(outs[0])


def use_checkpointing(model, images: int = 1) -> bool:
    """Turn on the generator's activation checkpointing when ``images`` images' backward does not fit
    the budget without it (and it does help); True when it is on. A generator without the setting:
    False."""
    G = model.generator
    if not _blocks(G) or G.checkpoint:
        return bool(_blocks(G)) and bool(G.checkpoint)
    free = budget_of(model) - in_use(G.device())
    if footprint(G, checkpointed=False)[0] * GRAD_SAFETY * images <= free:
        return False
    G.checkpoint = True
    return True


def items_per_chunk(model, num_items: int, images_per_item: int = 1, grad: bool = True) -> int:
    """How many of ``num_items`` latents (each ``images_per_item`` images) go through G at once.

    ``grad``: the chunk's graph is kept for a backward pass (else a no-grad forward); when not even
    one item's backward fits, the generator's activation checkpointing is turned on
    (:func:`use_checkpointing`) and the chunk follows its smaller footprint. 1 when a single item
    still exceeds the budget (then the budget cannot be met by chunking: it is a property of G at
    this batch). No probe for a single item."""
    num_items = int(num_items)
    if num_items <= 1:
        return 1
    if grad:
        use_checkpointing(model, images_per_item)
    saved, largest = footprint(model.generator)
    per_image = saved * GRAD_SAFETY if grad else largest * EVAL_COPIES
    free = budget_of(model) - in_use(model.generator.device())
    return int(max(1, min(num_items, free // max(1.0, per_image * max(1, images_per_item)))))


def chunk_ranges(num_items: int, chunk: int) -> Iterator[slice]:
    """Slices ``[s, s + chunk)`` covering ``range(num_items)``."""
    chunk = max(1, int(chunk))
    for s in range(0, int(num_items), chunk):
        yield slice(s, min(s + chunk, int(num_items)))


def chunked_grad(fn: Callable[[dict], Tensor], values: dict[str, Tensor], chunk: int
                 ) -> tuple[Tensor, dict[str, Tensor]]:
    """``sum_i fn(items i)`` and its gradient with respect to ``values``, ``chunk`` items at a time.

    Args:
        fn: ``{name: (c, ...)} -> (K,)``: K quantities, each summed over the c items of the chunk.
        values: name -> (N, ...) tensors sharing the leading item dim N (not modified).
        chunk: items per pass; only one chunk's graph exists at a time.
    Returns:
        ((K,) totals, detached; name -> (N, ...) gradient of ``totals.sum()`` w.r.t. that value).
    """
    n = next(iter(values.values())).shape[0]
    grads = {k: torch.zeros_like(v, dtype=v.dtype) for k, v in values.items()}
    total: Optional[Tensor] = None
    for sl in chunk_ranges(n, chunk):
        part = {k: v[sl].detach().requires_grad_(True) for k, v in values.items()}
        out = fn(part)
        gs = torch.autograd.grad(out.sum(), list(part.values()), allow_unused=True)
        for k, g in zip(part, gs):
            if g is not None:
                grads[k][sl] = g
        total = out.detach() if total is None else total + out.detach()
        del out, gs, part  # this chunk's graph goes before the next one is built
    assert total is not None
    return total, grads


def surrogate(values: dict[str, Tensor], grads: dict[str, Tensor]) -> Tensor:
    """A scalar that is 0 in value and whose gradient is ``sum_k grads[k] * d values[k]``: adding it
    to a loss carries the chunked gradients back through whatever produced ``values``."""
    parts = [(v * grads[k].detach()).sum() for k, v in values.items() if v.requires_grad]
    if not parts:  # nothing upstream to reach (values that are constants)
        return torch.zeros(())
    s = sum(parts[1:], parts[0])  # (not stack: the sites may differ in dtype)
    return s - s.detach()


__all__ = ["parse_size", "default_budget", "budget_of", "in_use", "footprint", "use_checkpointing", "items_per_chunk",
           "chunk_ranges", "chunked_grad", "surrogate", "GRAD_SAFETY", "EVAL_COPIES"]
