#!/usr/bin/python3
"""digits-drift — online adaptation on real data, end to end.

    make example          # the full run (a few minutes), writes results/ and digits_drift.png
    make example-short    # a short run (CI): the same path, fewer samples, checks it works

1. scikit-learn's bundled 8×8 digits (1797 images; no download) are split into a training set
   and a stream pool.
2. A small ternary MLP (linear 64→64 gs 8, relu, linear 64→10 gs 8) is trained offline with the
   project's PyTorch modules (clients/python/tscale/torch_layers.py: quantisation-aware training
   of a float shadow weight, then T and E), and exported with tools/torch_export.py.
3. build/tscaled serves it twice: `adapt` (gets feedback) and `frozen` (never does).
4. A stream of digits is sent in batches; its labels arrive `--label-delay` batches later and are
   sent as feedback to `adapt` — by the inference's id when the daemon lists the
   "feedback_by_id" extension, with the input again otherwise. Meanwhile the input distribution
   drifts: clean → shifted (2 pixels right) → noisy (Gaussian σ 0.35) → inverted (1 − x).
5. For each phase an oracle is trained offline on the training set under that phase's drift (the
   "offline model retrained on drifted data"), and evaluated on the same stream.
Accuracy is prequential: each prediction is scored before its label is known.

Everything goes through the Python client (clients/python/tscale/client.py).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import torch_export  # noqa: E402
from tscale import Client  # noqa: E402
from tscale import torch_layers as tl  # noqa: E402

HIDDEN, GS, CLASSES = 64, 8, 10
PHASES = ["clean", "dimmed", "shifted", "noisy", "inverted"]


# ─── Data and drift ───

def load_digits():
    from sklearn.datasets import load_digits as sk_digits
    d = sk_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def drift(x, phase, rng):
    """The phase's view of images x [n, 64] in [0, 1]."""
    if phase == "clean":
        return x
    if phase == "dimmed":    # uneven light: the top 5 rows at 15 % brightness
        img = x.reshape(-1, 8, 8).copy()
        img[:, :5, :] *= 0.15
        return img.reshape(-1, 64)
    if phase == "shifted":   # one pixel to the right, zeros shifted in
        img = x.reshape(-1, 8, 8)
        out = np.zeros_like(img)
        out[:, :, 1:] = img[:, :, :-1]
        return out.reshape(-1, 64)
    if phase == "noisy":
        return np.clip(x + rng.normal(0, 0.35, x.shape).astype(np.float32), 0, 1)
    if phase == "inverted":
        return 1.0 - x
    raise ValueError(phase)


# ─── Offline training (quantisation-aware) with the project's modules ───

class ShadowMLP(nn.Module):
    """Float shadow weights whose forward uses their ternary form (tl.ternary_weight)."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(HIDDEN, 64) * 0.1)
        self.w2 = nn.Parameter(torch.randn(CLASSES, HIDDEN) * 0.1)

    def forward(self, x):
        h = F.relu(F.linear(x, tl.ternary_weight(self.w1, GS)))
        return F.linear(h, tl.ternary_weight(self.w2, GS))

    def to_ternary(self):
        return nn.Sequential(tl.TernaryScaleTensor.from_float(self.w1.detach(), GS), nn.ReLU(),
                             tl.TernaryScaleTensor.from_float(self.w2.detach(), GS))


def fit(forward, params, lr, x, y, epochs, seed):
    """Adam on the cross-entropy of forward(x) against y, minibatches of 64 in a seeded order."""
    opt = torch.optim.Adam(params, lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(forward(xt[idx]), yt[idx]).backward()
            opt.step()


def train_offline(x, y, epochs, seed):
    torch.manual_seed(seed)
    m = ShadowMLP()
    fit(m, m.parameters(), 0.01, x, y, epochs, seed)
    return m.to_ternary()


def best_scales(seq, x, y, epochs, seed):
    """The best a scale-only update could reach: a copy of seq whose per-group log2-scales are
    trained by gradient descent (Adam) on (x, y) with the trits T fixed and each log2-scale kept
    within E ± 4 — exactly the range 2^(E + 4·mean_corr), mean_corr ∈ [-1, 1], can reach."""
    layers = [m for m in seq if isinstance(m, tl.TernaryScaleTensor)]
    logs = [nn.Parameter(m.E.float().clone()) for m in layers]
    Ts = [m._get_T().float() for m in layers]
    Es = [m.E.float() for m in layers]

    def forward(v):
        for i, (T, E, lg) in enumerate(zip(Ts, Es, logs)):
            s = torch.exp2(torch.minimum(torch.maximum(lg, E - 4), E + 4))
            v = F.linear(v, tl.expand_scales(s, *T.shape, GS) * T)
            if i + 1 < len(layers):
                v = F.relu(v)
        return v

    fit(forward, logs, 0.05, x, y, epochs, seed)
    return forward


def accuracy(seq, x, y):
    with torch.no_grad():
        return float((seq(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


# ─── The daemon ───

class Daemon:
    """build/tscaled on 127.0.0.1 port 0 with a temporary database."""

    def __init__(self, binary, models):
        self.dir = tempfile.mkdtemp(prefix="tscale-digits-")
        args = [binary, "--listen", "127.0.0.1:0", "--db", os.path.join(self.dir, "tscale.db"),
                "--snapshot-interval", "0"]
        for name, path in models.items():
            args += ["--model", f"{name}={path}"]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        self.port, found = None, threading.Event()

        def pump():
            for line in self.proc.stderr:
                m = re.search(r"listening on (?:http://)?[0-9.]+:(\d+)", line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(20) or self.port is None:
            self.close()
            raise SystemExit(f"{binary} did not start (run `make` first)")

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


# ─── The stream ───

def stream(client, pool_x, pool_y, a, rng, by_id):
    """Runs the phases; returns per-sample records {phase, label, adapt, frozen} and the
    inputs the stream used per phase (for the oracles)."""
    records, inputs, pending = [], {p: [] for p in PHASES}, []
    n_batches = a.samples_per_phase // a.batch
    initial = client.snapshots("reset")[-1]["snapshot_id"]   # the state it was loaded with
    for phase in PHASES:
        flush(client, pending, by_id)        # the previous phase's late labels, then a fresh start
        client.restore("reset", initial)
        for _ in range(n_batches):
            idx = rng.integers(0, len(pool_x), a.batch)
            x, y = drift(pool_x[idx], phase, rng), pool_y[idx]
            inputs[phase].append((x, y))
            out = {who: client.infer(who, x, binary=True) for who in SERVED}
            for k in range(a.batch):
                rec = {"phase": phase, "label": int(y[k])}
                rec.update({who: int(r.outputs[k].argmax()) for who, r in out.items()})
                records.append(rec)
            pending.append(({who: out[who].id for who in ("adapt", "reset")}, x, y))
            if len(pending) > a.label_delay:     # this batch's labels arrive now
                send_labels(client, pending.pop(0), by_id)
    flush(client, pending, by_id)
    return records, inputs


def flush(client, pending, by_id):
    while pending:
        send_labels(client, pending.pop(0), by_id)


def send_labels(client, item, by_id):
    """The labels of one batch, to both adapting models (by their inferences' ids if we can)."""
    ids, x, y = item
    for model, inference_id in ids.items():
        if by_id:
            client.feedback_by_id(model, inference_id, label=y.tolist())
        else:
            client.feedback(model, x, label=y.tolist(), binary=True)


# ─── Results ───

def rolling(hits, window):
    c = np.cumsum(np.insert(np.asarray(hits, dtype=np.float64), 0, 0))
    out = np.empty(len(hits))
    for i in range(len(hits)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


SERVED = {"adapt": "served, adapting (feedback)",
          "reset": "served, adapting, restored at each phase start",
          "frozen": "served, frozen copy"}


def summarize(records, oracle_hits, scale_hits):
    rows = []
    for phase in PHASES:
        rec = [r for r in records if r["phase"] == phase]
        half = len(rec) // 2
        row = {"phase": phase, "samples": len(rec)}
        for who in SERVED:
            hits = [r[who] == r["label"] for r in rec]
            row[who] = float(np.mean(hits))
            row[who + "_2nd_half"] = float(np.mean(hits[half:]))
        row["best_scales"] = float(np.mean(scale_hits[phase]))
        row["oracle"] = float(np.mean(oracle_hits[phase]))
        rows.append(row)
    return rows


def plot(records, oracle_hits, scale_hits, window, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    t = np.arange(len(records))
    for who, style in (("adapt", "-"), ("reset", "-"), ("frozen", "--")):
        ax.plot(t, rolling([r[who] == r["label"] for r in records], window), style, label=SERVED[who],
                lw=1.4 if who == "adapt" else 0.9)
    for hits, style, label in ((scale_hits, "-.", "offline, best scales only (T fixed)"),
                               (oracle_hits, ":", "offline, retrained on the phase's drift")):
        ax.plot(t, rolling([h for p in PHASES for h in hits[p]], window), style, label=label, lw=0.9)
    start = 0
    for phase in PHASES:
        n = sum(1 for r in records if r["phase"] == phase)
        ax.axvline(start, color="grey", lw=0.6)
        ax.text(start + n / 2, 1.04, phase, ha="center", color="grey")
        start += n
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("stream sample")
    ax.set_ylabel(f"accuracy (rolling {window})")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=7.5, ncol=2)
    fig.tight_layout()
    fig.savefig(path)


def table(rows):
    lines = ["| phase | samples | adapting | adapting, 2nd half | restored at phase start, 2nd half "
             "| frozen | best scale-only (offline) | retrained offline |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['phase']} | {r['samples']} | {r['adapt']:.3f} | {r['adapt_2nd_half']:.3f} | "
                     f"{r['reset_2nd_half']:.3f} | {r['frozen']:.3f} | {r['best_scales']:.3f} | "
                     f"{r['oracle']:.3f} |")
    return "\n".join(lines)


def parse_args():
    p = argparse.ArgumentParser(description="digits with drift: adapting vs frozen vs retrained")
    p.add_argument("--tscaled", default=os.path.join(ROOT, "build", "tscaled"))
    p.add_argument("--samples-per-phase", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--label-delay", type=int, default=4, help="labels arrive this many batches later")
    p.add_argument("--epochs", type=int, default=60, help="offline training epochs")
    p.add_argument("--prior-steps", type=int, default=0,
                   help="export with step_counter = N (corr_accum 0): the same scales, but each "
                        "feedback step then moves them less (the update is a mean over all steps)")
    p.add_argument("--seeds", type=int, default=3, help="runs (split, training, stream); the plot is the first")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--png", default=os.path.join(HERE, "digits_drift.png"))
    p.add_argument("--check", action="store_true",
                   help="fail unless the run behaves as documented (CI: make example-short)")
    return p.parse_args()


def run_once(a, seed, data):
    """One run: split, train, serve, stream, offline references. Returns its results."""
    x, y = data
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    train, pool = order[:1000], order[1000:]
    seq = train_offline(x[train], y[train], a.epochs, seed)
    print(f"seed {seed}: offline model accuracy {accuracy(seq, x[pool], y[pool]):.3f} on the "
          f"{len(pool)} held-out digits")
    if a.prior_steps:
        for m in seq:
            if hasattr(m, "step_counter"):
                m.step_counter.fill_(a.prior_steps)
    model_path = os.path.join(a.out, f"digits-seed{seed}.safetensors")   # not committed
    torch_export.save(seq, model_path, name="digits")
    d = Daemon(a.tscaled, {who: model_path for who in SERVED})
    try:
        client = Client(f"http://127.0.0.1:{d.port}")
        by_id = client.supports("feedback_by_id")
        print(f"seed {seed}: serving on port {d.port}; labels sent "
              f"{'by inference id' if by_id else 'with the input (the daemon has no feedback_by_id)'}")
        records, inputs = stream(client, x[pool], y[pool], a, rng, by_id)
        step = int(client.metrics()['tscale_model_step{model="adapt"}'])
    finally:
        d.close()
    oracle_hits, scale_hits, local = {}, {}, []
    for i, phase in enumerate(PHASES):
        xd = drift(x[train], phase, np.random.default_rng(seed + 100 + i))
        oracle = seq if phase == "clean" else train_offline(xd, y[train], a.epochs, seed)
        scaled = best_scales(seq, xd, y[train], a.epochs, seed)
        oracle_hits[phase], scale_hits[phase] = [], []
        for bx, by in inputs[phase]:
            with torch.no_grad():
                xt = torch.from_numpy(bx)
                oracle_hits[phase] += list(oracle(xt).argmax(1).numpy() == by)
                scale_hits[phase] += list(scaled(xt).argmax(1).numpy() == by)
                local += seq(xt).argmax(1).tolist()
    agree = float(np.mean([r["frozen"] == p for r, p in zip(records, local)]))
    return {"seed": seed, "rows": summarize(records, oracle_hits, scale_hits), "step": step,
            "by_id": by_id, "frozen_agrees_with_torch": agree,
            "plot": (records, oracle_hits, scale_hits)}


def mean_rows(runs):
    """Per phase and column: the mean over the runs, and [min, max]."""
    out = []
    for i, row in enumerate(runs[0]["rows"]):
        r = {"phase": row["phase"], "samples": row["samples"]}
        for k, v in row.items():
            if isinstance(v, float):
                vals = [run["rows"][i][k] for run in runs]
                r[k] = float(np.mean(vals))
                r[k + "_range"] = [min(vals), max(vals)]
        out.append(r)
    return out


def main():
    a = parse_args()
    t0 = time.monotonic()
    os.makedirs(a.out, exist_ok=True)
    data = load_digits()
    runs = [run_once(a, seed, data) for seed in range(a.seeds)]
    rows = mean_rows(runs)
    md = table(rows)
    print(md)
    first = runs[0]
    summary = {"feedback": "by_id" if first["by_id"] else "by_input",
               "args": {k: v for k, v in vars(a).items() if k not in ("tscaled", "out", "png", "check")},
               "phases_mean_over_seeds": rows,
               "runs": [{k: v for k, v in r.items() if k != "plot"} for r in runs],
               "seconds": round(time.monotonic() - t0, 1)}
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(f"Mean over {a.seeds} seeds (`{' '.join(sys.argv[1:]) or 'defaults'}`):\n\n{md}\n")
    plot(*first["plot"], max(50, a.samples_per_phase // 10), a.png,
         f"digits, ternary MLP 64-64-10 (seed 0): labels {a.label_delay} batches late, feedback "
         f"{'by id' if first['by_id'] else 'by input'}")
    print(f"wrote {a.png} and {a.out}/ ({summary['seconds']} s)")
    if a.check:
        check(runs, a)


def check(runs, a):
    """What the short run must show: every label was applied, the served model computes what
    the offline one does (it is the same model), and the drift is visible."""
    want_steps = len(PHASES) * (a.samples_per_phase // a.batch) + a.prior_steps
    problems = []
    for run in runs:
        by = {r["phase"]: r for r in run["rows"]}
        if run["step"] != want_steps:
            problems.append(f"adapt step {run['step']}, expected {want_steps} (one per labelled batch)")
        if run["frozen_agrees_with_torch"] < 0.99:
            problems.append(f"the served frozen model agrees with torch on {run['frozen_agrees_with_torch']:.3f} "
                            "of the predictions (expected all but ties)")
        if by["clean"]["frozen"] < 0.8:
            problems.append(f"frozen accuracy on clean digits {by['clean']['frozen']:.3f} < 0.8")
        if by["inverted"]["frozen"] > 0.5:
            problems.append(f"frozen accuracy on inverted digits {by['inverted']['frozen']:.3f}: no drift?")
    if problems:
        sys.exit("digits-drift check failed: " + "; ".join(problems))
    print("check ok")


if __name__ == "__main__":
    main()
