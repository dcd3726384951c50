#!/usr/bin/python3
"""gen.py — fixtures of the SPEC conformance tests (tests/e2e/test_spec_numerics.py),
computed by the PyTorch reference (SPEC §1). Run with Debian's python3-torch:

    /usr/bin/python3 tests/e2e/spec_data/gen.py

The output is committed, so `make test` needs neither torch nor this script. The models
differ on purpose from tests/golden: lived-in states a PyTorch user could write (step
counters that differ between layers, a huge step counter, step 0 with a non-zero
corr_accum, extreme E, gs larger than a row, gs 1, a one-column input, a one-class
output), batches over --max-batch, and long mixed-loss feedback sequences.

Each case <name> gives <name>.safetensors (the model as safetensors.torch.save_file writes
it) and <name>.json:
  {"layers", "forward": [{"input", "output"}], "feedback": [{"kind", "dtype", "input",
   "signal", "loss", "corr_accum": {layer: [...]}, "step": {layer: n}}],
   "final_forward": [{"input", "output"}]}
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import torch_export  # noqa: E402

ref = torch_export.reference(os.path.join(os.path.dirname(REPO_ROOT), "shared", "reference",
                                          "tscale_mini.py"))

# name: (layers, state tweaks, forward batch sizes, feedback [(kind, batch)], seed)
CASES = {
    "odd_shapes": ("linear:13x7/gs4+bias,relu,linear:7x5/gs32,silu,linear:5x1/gs1+bias",
                   dict(steps=[1000, 37, 5]), [1, 2, 5, 100],
                   [("target", 1), ("grad_output", 3), ("target", 4)] * 6, 11),
    "norm_sandwich": ("rmsnorm:10/gs3,linear:10x9/gs5+bias,gelu,rmsnorm:9/gs2,linear:9x6/gs4,gelu",
                      dict(steps=[0, 250, 0, 9]), [1, 3, 65],
                      [("label32", 2), ("label64", 1), ("grad_output", 5), ("target", 2)] * 5, 12),
    "wide_one_col": ("linear:1x24/gs8+bias,silu,linear:24x3/gs7", dict(steps=[123456789, 3]),
                     [1, 7, 64], [("label64", 3), ("label32", 1)] * 10, 13),
    "step0_corr": ("linear:20x16/gs16,relu,linear:16x4/gs3+bias",
                   dict(steps=[0, 0], corr_when_zero=True), [1, 4],
                   [("grad_output", 1), ("label32", 2)] * 5, 14),
    "extreme_e": ("linear:12x8/gs4+bias,gelu,linear:8x6/gs2", dict(steps=[7, 7], e_range=(-20, 6)),
                  [1, 3], [("target", 2)] * 10, 15),
    "one_class": ("linear:6x1/gs3", dict(steps=[4]), [1, 3], [("label64", 3), ("target", 1)] * 3, 16),
    # GELU inputs far below 0: PyTorch's (vectorized) GELU backward is exactly 0 there for
    # x < about -6.15, so dW rows of such units are 0 and leave corr_accum alone.
    "gelu_tail": ("linear:8x16/gs4+bias,gelu,linear:16x4/gs8", dict(steps=[3, 3], e_range=(0, 2)),
                  [1, 3], [("target", 2), ("label64", 3), ("grad_output", 1)] * 4, 17),
}
TAIL_OK = {"gelu_tail"}
GELU_TAIL = -6.0  # below this, the reference's GELU gradient may be flushed to 0



def setup_state(seq, gen, steps, corr_when_zero=False, e_range=(-5, 1)):
    """Random trits, E, bias, corr_accum and step counters (a lived-in state)."""
    ternary = [m for m in seq if hasattr(m, "T_packed")]
    with torch.no_grad():
        for m, step in zip(ternary, steps):
            rows, cols = m._T_shape.tolist()
            trits = torch.randint(-1, 2, (rows, cols), generator=gen).float()
            m.T_packed.copy_(ref.pack_ternary(trits)[0])
            m.E.copy_(torch.randint(e_range[0], e_range[1], m.E.shape, generator=gen, dtype=torch.int8))
            m.step_counter.fill_(step)
            gs = m.group_size
            bound = max(step, 1 if corr_when_zero else 0) * min(gs, cols)
            bound = min(bound, 10**12)
            if bound:
                m.corr_accum.copy_(torch.randint(-bound, bound + 1, m.corr_accum.shape,
                                                 generator=gen, dtype=torch.int64))
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(torch.randint(-3, 4, m.bias.shape, generator=gen, dtype=torch.int32))


def in_dim(seq):
    m = seq[0]
    return m.in_dim if hasattr(m, "in_dim") else m.dim


def f32(t):
    return [float(v) for v in t.reshape(-1).tolist()]


def gelu_inputs_min(seq, x):
    low = float("inf")
    with torch.no_grad():
        for m in seq:
            if isinstance(m, torch.nn.GELU):
                low = min(low, float(x.min()))
            x = m(x)
    return low


def feedback_step(seq, kind, x, gen):
    low = gelu_inputs_min(seq, x)
    y = seq(x)
    if kind == "grad_output":
        signal = torch.randn(y.shape, generator=gen)
        y.backward(signal)
        loss, sig, dtype = None, f32(signal), "FP32"
    elif kind == "target":
        signal = torch.randn(y.shape, generator=gen)
        lo = F.mse_loss(y, signal)
        lo.backward()
        loss, sig, dtype = float(lo), f32(signal), "FP32"
    else:
        signal = torch.randint(0, y.shape[1], (y.shape[0],), generator=gen)
        lo = F.cross_entropy(y, signal)
        lo.backward()
        loss, sig = float(lo), [int(v) for v in signal.tolist()]
        dtype = "INT32" if kind == "label32" else "INT64"
        kind = "label"
    for m in seq:
        if hasattr(m, "update_corr"):
            m.update_corr()
    ternary = {str(i): m for i, m in enumerate(seq) if hasattr(m, "T_packed")}
    return {"gelu_min": low, "kind": kind, "dtype": dtype, "input": f32(x), "rows": x.shape[0], "signal": sig,
            "loss": loss,
            "corr_accum": {i: m.corr_accum.tolist() for i, m in ternary.items()},
            "step": {i: int(m.step_counter.item()) for i, m in ternary.items()}}


def forwards(seq, sizes, gen):
    out = []
    for b in sizes:
        x = torch.randn(b, in_dim(seq), generator=gen) * 2
        with torch.no_grad():
            out.append({"rows": b, "input": f32(x), "output": f32(seq(x))})
    return out


def make(name, layers, tweaks, sizes, fb, seed):
    while True:
        case = attempt(name, layers, tweaks, sizes, fb, seed)
        low = min(s.pop("gelu_min") for s in case["feedback"])
        if (name in TAIL_OK) == (low < GELU_TAIL):
            break
        seed += 1000
    with open(os.path.join(HERE, name + ".json"), "w") as f:
        json.dump(case, f, separators=(",", ":"))
    print(f"{name}: seed {seed}, lowest GELU input {low:.2f}")


def attempt(name, layers, tweaks, sizes, fb, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    specs = torch_export.parse_layers(layers)
    seq = torch_export.build(specs, ref)
    setup_state(seq, gen, **tweaks)
    torch_export.save(seq, os.path.join(HERE, name + ".safetensors"), name=name)
    case = {"name": name, "layers": specs, "forward": forwards(seq, sizes, gen), "feedback": []}
    for kind, b in fb:
        x = torch.randn(b, in_dim(seq), generator=gen)
        case["feedback"].append(feedback_step(seq, kind, x, gen))
    case["final_forward"] = forwards(seq, sizes[:2], gen)
    torch_export.save(seq, os.path.join(HERE, name + ".final.safetensors"), name=name)
    return case


if __name__ == "__main__":
    for n, c in CASES.items():
        make(n, *c)
