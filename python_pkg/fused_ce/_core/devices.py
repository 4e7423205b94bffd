"""Device checks of the public API. The ops take every tensor on the logits' device (the C++ glue and the
fake kernels refuse anything else); the public API raises torch's own exception for a mix of devices,
and lets through what torch lets through: a 0-dim CPU tensor next to tensors of another device, which
torch treats as a scalar (it is then moved to the logits' device).

torch's message depends on its kernels' argument order (for a CPU input, a meta weight gives "Tensor on
device meta is not on the expected device cpu!", a meta target the reverse), so on a mix of devices
the same torch loss is called on one-element stand-ins on the same devices: it raises what torch raises
for the user's call, at the cost of a few tiny tensors, only on that error path."""

import torch


def _stand_in(t):
    return None if t is None else torch.zeros([1] * t.dim(), dtype=t.dtype, device=t.device)


def on_input_device(torch_loss, input, *others):
    """`others` (tensors or None) on input's device: torch_loss(input, *others) is the torch loss whose
    error a mix of devices raises."""
    device = input.device
    for t in others:  # a plain loop: this runs on every call
        if t is not None and t.device != device:
            break
    else:
        return others
    torch_loss(_stand_in(input), *[_stand_in(t) for t in others])
    return tuple(None if t is None else t.to(device) for t in others)
