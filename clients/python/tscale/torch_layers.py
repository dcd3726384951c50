"""tscale.torch_layers — the project's PyTorch modules for tscale's ternary layers (SPEC §1).

These are the layers the daemon serves, written for PyTorch so that a model can be built, trained
offline, exported (tools/torch_export.py) and checked without any file outside the repository:

    TernaryScaleTensor(in_dim, out_dim, group_size=32, bias=False)    "ternary_linear"
    TernaryRMSNorm(dim, group_size=32)                                "ternary_rmsnorm"

They are drop-in equivalents of the reference (../shared/reference/tscale_mini.py): the same
buffers under the same names and dtypes (so `state_dict()` is a tscale model file's tensors), the
same random draws at construction (so the same seed builds the same model), and the same float32
operations in the same order in forward and in `update_corr` (so outputs are bit-identical and
`corr_accum` / `step_counter` equal the reference's exactly). tests/torch/test_torch_layers.py
proves it: tests/golden/gen.py run with these modules writes byte-identical golden files.

Offline training. The served state is integer (trits T, per-group exponents E, int32 bias), so
gradient descent runs on a float "shadow" weight and rounds it: `ternary_weight(w, gs)` is the
quantised weight 2^E·T with a straight-through gradient, `quantize(w, gs)` gives (T, E), and
`TernaryScaleTensor.from_float(w, gs)` builds a layer holding them. Online adaptation (what the
daemon does with feedback) is `update_corr` after a backward, exactly as in the reference.

Only this module needs torch; the rest of the `tscale` package is standard library only.
"""
from math import ceil, log2

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TernaryScaleTensor", "TernaryRMSNorm", "pack_ternary", "unpack_ternary",
           "quantize", "ternary_weight", "expand_scales", "rms_norm"]


def rms_norm(x, dim):
    """x · rsqrt(mean(x²) + ε) over the last `dim` features, ε = float32 epsilon (SPEC §1). The
    reference's own fallback for PyTorch < 2.4 (Debian 12 ships 1.13), used always here so the
    result does not depend on the installed version."""
    eps = torch.finfo(x.dtype).eps
    return x * torch.rsqrt(x.pow(2).mean(dim=(-1,), keepdim=True) + eps)


# ─── Packing: five trits a byte, base 3, digit 0 = -1, 1 = 0, 2 = +1 (SPEC §1) ───

def pack_ternary(w):
    """(T_packed u8, shape, pad) of a tensor whose signs are the trits: the flattened trits
    row-major, five per byte, byte = d0 + 3·d1 + 9·d2 + 27·d3 + 81·d4, the last byte padded
    with digit 0; pad = the number of pad digits."""
    q = torch.ones_like(w, dtype=torch.uint8)
    q[w < 0] = 0
    q[w > 0] = 2
    flat = q.flatten()
    pad = (-len(flat)) % 5
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.uint8, device=flat.device)])
    d = flat.view(-1, 5)
    packed = (d[:, 0] + d[:, 1] * 3 + d[:, 2] * 9 + d[:, 3] * 27 + d[:, 4] * 81).to(torch.uint8)
    return packed.cpu(), w.shape, pad


def unpack_ternary(packed, shape, pad=0):
    """The int8 trits (-1, 0, +1) of shape `shape` that pack_ternary packed."""
    p = packed.to(torch.int16)
    digits = []
    for _ in range(5):
        digits.append(p % 3)
        p = p // 3
    out = torch.stack(digits, dim=1).flatten()
    if pad:
        out = out[:-pad]
    return (out.view(shape) - 1).to(torch.int8)


# ─── Scales ───

def _group_scales(E, corr_accum, step, gs):
    """S per group, float32, as the reference computes it: exp2(E + 4·corr/(step·gs)) when
    step > 0, else exp2(E). The operations and their order are the reference's (bit-identical)."""
    E_adj = E.float()
    if step > 0:
        E_adj = E_adj + (corr_accum.float() / max(step * gs, 1)) * 4.0
    return torch.exp2(E_adj)


def expand_scales(S, rows, cols, gs):
    """The [rows, cols] per-weight scale of per-group scales S [rows · ceil(cols/gs)]."""
    return S.view(rows, ceil(cols / gs)).repeat_interleave(gs, dim=1)[:, :cols]


def _n_groups(rows, cols, gs):
    return rows * ceil(cols / gs)


def _ternarize(x, threshold):
    return x.sign() * (x.abs() > threshold).to(x.dtype)


class _TernaryState(nn.Module):
    """The buffers every ternary layer holds (SPEC §1), registered in the state_dict's order:
    T_packed u8, _T_shape i64[2], _T_pad i64, E i8[G], corr_accum i64[G], step_counter i64[1]."""

    def _register_state(self, T, E_init, gs):
        packed, _, pad = pack_ternary(T)
        rows, cols = T.shape
        self.register_buffer("T_packed", packed)
        self.register_buffer("_T_shape", torch.tensor([rows, cols], dtype=torch.long))
        self.register_buffer("_T_pad", torch.tensor(pad, dtype=torch.long))
        n = _n_groups(rows, cols, gs)
        self.register_buffer("E", torch.full((n,), E_init, dtype=torch.int8))
        self.register_buffer("corr_accum", torch.zeros(n, dtype=torch.int64))
        self.register_buffer("step_counter", torch.zeros(1, dtype=torch.int64))

    def _get_T(self):
        """The trits, int8 [rows, cols]."""
        return unpack_ternary(self.T_packed, tuple(self._T_shape.tolist()), int(self._T_pad.item()))

    def scales(self):
        """The per-group scales S (float32 [G]) of the current state."""
        return _group_scales(self.E, self.corr_accum, self.step_counter.item(), self.group_size)

    def effective_weight(self):
        """W_eff = S[group] · T, float32 [rows, cols]: what the forward multiplies by."""
        rows, cols = self._T_shape.tolist()
        return expand_scales(self.scales(), rows, cols, self.group_size) * self._get_T().float()

    def n_groups(self):
        return self.E.numel()


class TernaryScaleTensor(_TernaryState):
    """ternary_linear: y = x · W_effᵀ + bias, W_eff = 2^(E + 4·corr_accum/(step·gs)) · T per
    group of `group_size` inputs of a row; bias is int32 (or None).

    Construction draws the reference's initial weights (randn · 0.1, or · 0.02 with a bias,
    ternarised at 0.05) and E = clamp(round(log2(0.5/√in_dim)), -8, 0). Forward keeps dL/dW_eff
    (through a hook) for `update_corr`, the online step: corr_accum[g] −= Σ_{c∈g} sign(dW)·T,
    step_counter += 1."""

    def __init__(self, in_dim, out_dim, threshold=0.05, group_size=32, bias=False):
        super().__init__()
        self.in_dim, self.out_dim, self.group_size = in_dim, out_dim, group_size
        w_init = torch.randn(out_dim, in_dim) * (0.1 if not bias else 0.02)
        target_S = 0.5 * (in_dim ** -0.5)
        E_init = max(-8, min(0, int(round(log2(max(target_S, 2 ** -8))))))
        self._register_state(_ternarize(w_init, threshold), E_init, group_size)
        if bias:
            self.register_buffer("bias", torch.zeros(out_dim, dtype=torch.int32))
        else:
            self.bias = None

    @classmethod
    def from_float(cls, weight, group_size=32, bias=None):
        """A layer holding quantize(weight, group_size) (step 0, corr_accum 0), with `bias`
        rounded to int32 when given. weight: float [out_dim, in_dim]."""
        out_dim, in_dim = weight.shape
        m = cls(in_dim, out_dim, group_size=group_size, bias=bias is not None)
        T, E = quantize(weight.detach(), group_size)
        with torch.no_grad():
            m.T_packed.copy_(pack_ternary(T)[0])
            m.E.copy_(E)
            if bias is not None:
                m.bias.copy_(torch.round(bias.detach()).to(torch.int32))
        return m

    def forward(self, x):
        w_eff = self.effective_weight().detach().requires_grad_(True)

        def capture(grad_w):  # dL/dW_eff [out, in], summed over the batch by autograd
            self._hook_grad_T_sign = grad_w.sign().to(torch.int8)

        w_eff.register_hook(capture)
        y = F.linear(x, w_eff)
        if self.bias is not None:
            y = y + self.bias.float()
        return y

    @torch.no_grad()
    def update_corr(self):
        """One online step from the gradient of the last backward (a no-op without one):
        score[g] = Σ_{c∈g} sign(dW)[r][c]·T[r][c] summed as int16 (the reference's own wrap),
        corr_accum −= score, step_counter += 1."""
        grad_sign = getattr(self, "_hook_grad_T_sign", None)
        if grad_sign is None:
            return
        gs, rows, cols = self.group_size, self.out_dim, self.in_dim
        signed = grad_sign * self._get_T()
        signed = F.pad(signed, (0, ceil(cols / gs) * gs - cols))
        score = signed.view(rows, -1, gs).sum(dim=2, dtype=torch.int16)
        self.corr_accum -= score.flatten().to(torch.int64)
        self.step_counter += 1
        del self._hook_grad_T_sign


class TernaryRMSNorm(_TernaryState):
    """ternary_rmsnorm: y = rmsnorm(x) ⊙ w, w = 2^(E + …)·T per group (E starts at -4; trits
    drawn as the reference does: randn · 0.02 ternarised at 0.01). Online feedback never
    changes it (the reference's update_corr is a no-op here)."""

    def __init__(self, dim, group_size=32):
        super().__init__()
        self.dim, self.group_size = dim, group_size
        w_init = torch.randn(dim) * 0.02
        self._register_state(_ternarize(w_init.view(1, dim), 0.01), -4, group_size)

    def forward(self, x):
        return rms_norm(x.float(), self.dim) * self.effective_weight().flatten()

    def update_corr(self):
        pass


# ─── Offline training helpers ───

def quantize(w, group_size):
    """(T int8, E int8) for a float weight [rows, cols]: per group of `group_size` inputs of a
    row, E = round(log2(mean |w|)) clamped to int8 (0 for an all-zero group), and T = sign(w) where |w| > 2^E / 2, else 0:
    2^E·T is the nearest ternary multiple of the group's power-of-two scale."""
    rows, cols = w.shape
    pad = ceil(cols / group_size) * group_size - cols
    g = F.pad(w.abs(), (0, pad)).view(rows, -1, group_size)
    n = torch.full((ceil(cols / group_size),), float(group_size))
    n[-1] = group_size - pad
    mean = g.sum(dim=2) / n
    E = torch.round(torch.log2(mean.clamp_min(2.0 ** -126))).clamp(-128, 127)
    E = torch.where(mean > 0, E, torch.zeros_like(E))   # an all-zero group: T = 0, E = 0
    S = expand_scales(torch.exp2(E).flatten(), rows, cols, group_size)
    T = torch.where(w.abs() > S / 2, w.sign(), torch.zeros_like(w))
    return T.to(torch.int8), E.flatten().to(torch.int8)


def ternary_weight(w, group_size):
    """2^E·T of quantize(w), with the gradient passed straight through to w (the usual
    quantisation-aware training estimator): train a float w, serve its quantized form."""
    T, E = quantize(w.detach(), group_size)
    q = expand_scales(torch.exp2(E.float()), *w.shape, group_size) * T.float()
    return w + (q - w).detach()
