#!/usr/bin/python3
"""gen.py — golden cases for the C core, computed by the PyTorch reference.

Run from anywhere with Debian's python3-torch:   /usr/bin/python3 tests/golden/gen.py

The golden files are computed by the reference, ../shared/reference/tscale_mini.py beside
the repository root (CI clones the repository next to shared/). The output is committed,
so the C tests need neither Python nor torch.

    gen.py [--reference PATH | --project] [--out DIR]

--project computes them with the project's own modules (clients/python/tscale/
torch_layers.py) instead: tests/torch/test_torch_layers.py does so into a temporary
--out DIR and requires every file to be byte-identical to the committed ones.

Each case <name> gives three files in tests/golden/:
  <name>.json                 read by tests/unit/test_golden.c (and test_core.c)
  <name>.model.safetensors    the initial model (tools/torch_export.py's save)
  <name>.final.safetensors    the model after the feedback sequence

<name>.json:
  {"name", "about",
   "layers":   the tscale.layers array (SPEC §2),
   "state":    per layer: null (activation) or {"T_packed":[u8], "T_pad", "T":[trits, row-major],
               "E":[i8], "corr_accum":[i64], "step", "bias":[i32] or null},
   "forward":  [{"input":[[f32]], "output":[[f32]]}]           before the feedback,
   "feedback": [{"input":[[f32]], "kind":"grad_output"|"target"|"label",
                 "grad_output"|"target":[[f32]] | "label":[int], "loss": f32 or null,
                 "after": per layer null or {"corr_accum":[i64], "step"}}],
   "final_forward": [{"input", "output"}]                       after the feedback}

Floats are written with Python's repr of the float32 value, so they read back exactly.

A case is kept only when its feedback is robust to float rounding: every ReLU input is
clearly away from 0 and, for every nonzero trit, dW = dyᵀx is clearly away from 0
relative to Σ_b |dy||x| (SPEC §1 allows a sign to differ only within rounding of 0).
Otherwise the case is drawn again with the next seed.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
REFERENCE = os.path.join(os.path.dirname(REPO_ROOT), "shared", "reference", "tscale_mini.py")
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import torch_export  # noqa: E402  (tools/torch_export.py)

ref = None  # the module defining the layers: set by main() (the reference by default)

MARGIN_DW = 1e-3     # |dW| / Σ_b |dy·x| below this (and nonzero) is too close to call
MARGIN_RELU = 1e-4   # |h| / rms(h) below this at a ReLU input is too close to call


# ─── Cases ───
# layers: (kind, args); feedback: list of (kind, batch); lived: set lived-in state.
CASES = [
    dict(name="linear_gs8_grad", about="one linear, in 13 (not a multiple of 5 or gs), fresh state, "
         "grad_output B=1", layers=[("linear", 13, 7, 8, False)], lived=False,
         forward=[1, 3], feedback=[("grad_output", 1)] * 6),
    dict(name="linear_gs16_bias_mse", about="one linear with int32 bias, lived-in state, mse B=2",
         layers=[("linear", 37, 11, 16, True)], lived=True,
         forward=[1, 4], feedback=[("target", 2)] * 6),
    dict(name="linear_gs32_xent", about="one linear, gs 32 with a partial group, lived-in, "
         "cross_entropy B=4", layers=[("linear", 71, 5, 32, False)], lived=True,
         forward=[1, 2], feedback=[("label", 4)] * 6),
    dict(name="linear_gs64_grad", about="one linear, gs 64 (two groups per row, one partial), "
         "grad_output B=1 and B=3", layers=[("linear", 131, 9, 64, True)], lived=True,
         forward=[1, 3], feedback=[("grad_output", 1)] * 3 + [("grad_output", 3)] * 3),
    dict(name="mlp_relu_mse", about="linear+bias → relu → linear, mse B=3",
         layers=[("linear", 23, 32, 8, True), ("relu",), ("linear", 32, 6, 16, False)],
         lived=True, forward=[1, 3], feedback=[("target", 3)] * 6),
    dict(name="mlp_silu_xent", about="linear → silu → linear, cross_entropy B=2",
         layers=[("linear", 19, 24, 16, False), ("silu",), ("linear", 24, 5, 8, False)],
         lived=False, forward=[1, 2], feedback=[("label", 2)] * 6),
    dict(name="norm_mlp_gelu_xent", about="rmsnorm → linear+bias → gelu → linear, lived-in, "
         "cross_entropy B=4",
         layers=[("rmsnorm", 21, 8), ("linear", 21, 40, 16, True), ("gelu",),
                 ("linear", 40, 10, 32, False)],
         lived=True, forward=[1, 5], feedback=[("label", 4)] * 6),
    dict(name="norm_mlp_gelu_grad", about="rmsnorm → linear → gelu → linear+bias, lived-in, "
         "grad_output B=2",
         layers=[("rmsnorm", 33, 16), ("linear", 33, 17, 8, False), ("gelu",),
                 ("linear", 17, 3, 8, True)],
         lived=True, forward=[1, 2], feedback=[("grad_output", 2)] * 6),
    dict(name="deep_mixed", about="linear → relu → rmsnorm → linear → silu → linear (backward "
         "through a middle rmsnorm), mixed losses",
         layers=[("linear", 11, 20, 8, True), ("relu",), ("rmsnorm", 20, 8),
                 ("linear", 20, 20, 16, False), ("silu",), ("linear", 20, 4, 64, False)],
         lived=True, forward=[1, 3],
         feedback=[("target", 3), ("label", 2), ("grad_output", 1), ("target", 1),
                   ("label", 3), ("grad_output", 2)]),
]


def f32(v):
    """A float32 value as an exact Python float (repr round-trips)."""
    return float(torch.tensor(v, dtype=torch.float32).item())


def rows(t):
    return [[f32(v) for v in r] for r in t.tolist()]


def build(layers):
    mods = []
    for l in layers:
        if l[0] == "linear":
            _, i, o, gs, bias = l
            mods.append(ref.TernaryScaleTensor(i, o, group_size=gs, bias=bias))
        elif l[0] == "rmsnorm":
            mods.append(ref.TernaryRMSNorm(l[1], group_size=l[2]))
        else:
            mods.append({"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}[l[0]]())
    return nn.Sequential(*mods)


def is_ternary(m):
    return isinstance(m, (ref.TernaryScaleTensor, ref.TernaryRMSNorm))


def live_in(seq, gen):
    """Lived-in state: dense T (a third each of -1, 0, +1: the init's T is mostly 0),
    step > 0, corr_accum within ±step·gs, varied E, nonzero bias."""
    for m in seq:
        if not is_ternary(m):
            continue
        T = torch.randint(-1, 2, tuple(m._T_shape.tolist()), generator=gen).to(torch.float32)
        packed, _, pad = ref.pack_ternary(T)
        m.T_packed.copy_(packed)
        assert int(m._T_pad) == pad
        G = m.E.numel()
        step = int(torch.randint(1, 500, (1,), generator=gen))
        lim = step * m.group_size
        m.step_counter.fill_(step)
        m.corr_accum.copy_(torch.randint(-lim, lim + 1, (G,), generator=gen) // 2)
        m.E.copy_(m.E.to(torch.int64).add(torch.randint(-1, 2, (G,), generator=gen))
                  .clamp(-8, 0).to(torch.int8))
        if getattr(m, "bias", None) is not None:
            m.bias.copy_(torch.randint(-3, 4, m.bias.shape, generator=gen).to(torch.int32))


def state_of(m):
    if not is_ternary(m):
        return None
    return {"T_packed": m.T_packed.tolist(), "T_pad": int(m._T_pad), "T": m._get_T().flatten().tolist(),
            "E": m.E.tolist(), "corr_accum": m.corr_accum.tolist(), "step": int(m.step_counter),
            "bias": m.bias.tolist() if getattr(m, "bias", None) is not None else None}


def after_of(m):
    if not is_ternary(m):
        return None
    return {"corr_accum": m.corr_accum.tolist(), "step": int(m.step_counter)}


def forward_case(seq, B, gen, in_dim):
    x = torch.randn(B, in_dim, generator=gen)
    with torch.no_grad():
        y = seq(x)
    return {"input": rows(x), "output": rows(y)}


class Unstable(Exception):
    """The step is too close to a sign decision for float rounding; draw again."""


def check_margins(seq, inputs, out_grads):
    for i, m in enumerate(seq):
        x = inputs[i]
        if isinstance(m, nn.ReLU):
            rms = x.pow(2).mean().sqrt()
            # an exact 0 (a row of zero trits, plus a zero bias) is exact in C too
            if ((x != 0) & (x.abs() < MARGIN_RELU * rms)).any():
                raise Unstable(f"layer {i}: relu input near 0")
        if isinstance(m, ref.TernaryScaleTensor):
            dy = out_grads[i].double()
            xd = x.detach().double()
            dw = dy.t() @ xd
            mag = dy.abs().t() @ xd.abs()
            T = m._get_T() != 0
            close = T & (mag > 0) & (dw.abs() < MARGIN_DW * mag)
            if close.any():
                raise Unstable(f"layer {i}: dW near 0 at {close.nonzero()[0].tolist()}")


def feedback_step(seq, kind, B, gen, in_dim, out_dim):
    x = torch.randn(B, in_dim, generator=gen)
    inputs, outputs = [], []

    def keep(mod, inp, out):
        inputs.append(inp[0])
        if out.requires_grad:   # not so for a first rmsnorm: no gradient reaches it
            out.retain_grad()
        outputs.append(out)

    hooks = [m.register_forward_hook(keep) for m in seq]
    y = seq(x)
    for h in hooks:
        h.remove()
    step = {"input": rows(x), "kind": kind}
    if kind == "grad_output":
        g = torch.randn(B, out_dim, generator=gen)
        y.backward(g)
        step["grad_output"] = rows(g)
        loss = None
    elif kind == "target":
        t = torch.randn(B, out_dim, generator=gen)
        loss = F.mse_loss(y, t)
        loss.backward()
        step["target"] = rows(t)
    else:
        lab = torch.randint(0, out_dim, (B,), generator=gen)
        loss = F.cross_entropy(y, lab)
        loss.backward()
        step["label"] = lab.tolist()
    step["loss"] = f32(loss.item()) if loss is not None else None
    check_margins(seq, inputs, [o.grad for o in outputs])
    for m in seq:
        if hasattr(m, "update_corr"):
            m.update_corr()
    step["after"] = [after_of(m) for m in seq]
    return step


def layer_json(m):
    return torch_export.layer_spec(m, 0)


def make_case(c, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    seq = build(c["layers"])
    if c["lived"]:
        live_in(seq, gen)
    in_dim = c["layers"][0][1]
    out_dim = [l for l in c["layers"] if l[0] in ("linear", "rmsnorm")][-1]
    out_dim = out_dim[2] if out_dim[0] == "linear" else out_dim[1]
    case = {"name": c["name"], "about": c["about"], "seed": seed,
            "layers": [layer_json(m) for m in seq], "state": [state_of(m) for m in seq]}
    initial = torch_export.to_bytes(seq, name=c["name"])
    case["forward"] = [forward_case(seq, B, gen, in_dim) for B in c["forward"]]
    case["feedback"] = [feedback_step(seq, k, B, gen, in_dim, out_dim) for k, B in c["feedback"]]
    case["final_forward"] = [forward_case(seq, B, gen, in_dim) for B in c["forward"]]
    return case, initial, torch_export.to_bytes(seq, name=c["name"])


def write(path, data):
    mode = "w" if isinstance(data, str) else "wb"
    with open(path, mode) as f:
        f.write(data)


def main(argv=None):
    global ref
    p = argparse.ArgumentParser(description="golden cases for the C core")
    p.add_argument("--reference", default=REFERENCE, help="the layers' module (tscale_mini.py)")
    p.add_argument("--project", action="store_true", help="use clients/python/tscale/torch_layers.py")
    p.add_argument("--out", default=HERE, help="directory to write to (default: tests/golden)")
    a = p.parse_args(argv)
    ref = torch_export.reference(None if a.project else a.reference)
    total = 0
    for k, c in enumerate(CASES):
        for attempt in range(100):
            seed = 1000 * (k + 1) + attempt
            try:
                case, initial, final = make_case(c, seed)
                break
            except Unstable as e:
                print(f"{c['name']}: seed {seed} unstable ({e}), next", file=sys.stderr)
        else:
            sys.exit(f"{c['name']}: no stable seed found")
        text = json.dumps(case, separators=(",", ":")) + "\n"
        base = os.path.join(a.out, c["name"])
        write(base + ".json", text)
        write(base + ".model.safetensors", initial)
        write(base + ".final.safetensors", final)
        total += len(text) + len(initial) + len(final)
        print(f"{c['name']}: seed {seed}, {len(case['feedback'])} steps")
    write(os.path.join(a.out, "cases.txt"), "".join(c["name"] + "\n" for c in CASES))
    print(f"{len(CASES)} cases, {total} bytes")


if __name__ == "__main__":
    main()
