"""One training step (forward and backward) of a tiny transformers causal LM, stock against fused_ce's
integration (use_fused_ce(model): the loss from the hidden states, no logits), family by family: peak memory
and step time.

    python benchmarks/hf_training_step.py [--families llama,gemma2,...] [--vocab 32000] [--seq 512] [--batch 4]
        [--hidden 64] [--steps 3] [--out DIR]

The defaults are the issue's memory check (vocabulary 32000, sequence 512, batch 4, fp32, every family of
benchmarks/hf_families.py). `--families llama --vocab 128256` is a step where the head dominates.

Memory, two ways, each (family, provider) in a fresh process:
  peak_mib   the RSS high-water mark (VmHWM) during the first step minus the RSS once the model and the batch
             exist (benchmarks/timing.py's CPU method: torch's CPU allocator is not instrumented; glibc's mmap
             threshold is fixed so that freed buffers return to the OS). It includes the parameters' gradients.
  saved_mib  the bytes autograd keeps between the forward and the backward (benchmarks/saved_tensors.py).
Time: in one more fresh process holding both models, the median of --steps steps of each, stock and fused steps
alternating after a warm-up step each (wall clock; zero_grad(set_to_none=True) after each step, as the Trainer
does). Printed as a table; with --out, written as CSV too.
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

PROVIDERS = ("stock", "fused")
MiB = 1 << 20


def _model(family, provider, vocab, hidden):
    import hf_families
    import torch

    from fused_ce.integrations.transformers import use_fused_ce

    torch.manual_seed(0)
    model = hf_families.build(family, vocab, hidden).train()
    return use_fused_ce(model) if provider == "fused" else model


def _inputs(vocab, seq, batch):
    import torch

    ids = torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def _step(model, inputs):
    """One training step as the Trainer takes it: forward, backward, zero_grad(set_to_none=True)."""
    from saved_tensors import SavedTensors

    with SavedTensors() as saved:
        loss = model(**inputs).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return saved, loss.item()


def _memory_child(family, provider, vocab, seq, batch, hidden):
    """Runs in a fresh process: the first step's peak RSS above the RSS with the model and batch built."""
    import timing

    timing._fixed_mmap_threshold()
    model, inputs = _model(family, provider, vocab, hidden), _inputs(vocab, seq, batch)
    baseline = timing._rss_bytes("VmRSS")
    if not timing._reset_rss_peak():
        raise RuntimeError("cannot reset the RSS high-water mark (/proc/self/clear_refs)")
    saved, loss = _step(model, inputs)
    peak = timing._rss_bytes("VmHWM") - baseline
    return {"loss": loss, "peak_mib": peak / MiB, "saved_mib": saved.bytes / MiB}


def _time_child(family, vocab, seq, batch, hidden, steps):
    """Runs in a fresh process: both providers' steps in alternating rounds (A B A B ...), after one warm-up step
    each, so that a load that comes and goes on the machine falls on both alike. Median seconds per provider."""
    models = {provider: _model(family, provider, vocab, hidden) for provider in PROVIDERS}
    inputs = _inputs(vocab, seq, batch)
    seconds = {provider: [] for provider in PROVIDERS}
    for round_ in range(steps + 1):
        for provider, model in models.items():
            start = time.perf_counter()
            _step(model, inputs)
            if round_:
                seconds[provider].append(time.perf_counter() - start)
    return {provider: 1e3 * statistics.median(values) for provider, values in seconds.items()}


def _run_child(call):
    """The result of `call` (a Python expression on this module, as b) in a fresh interpreter."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import json, sys; sys.path.insert(0, {here!r}); import hf_training_step as b; print(json.dumps({call}))"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{call} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(family, args):
    """{provider: {loss, peak_mib, saved_mib, step_ms}} for one family."""
    shape = f"{args.vocab}, {args.seq}, {args.batch}, {args.hidden}"
    rows = {
        provider: dict(
            family=family, provider=provider, **_run_child(f"b._memory_child({family!r}, {provider!r}, {shape})")
        )
        for provider in PROVIDERS
    }
    for provider, ms in _run_child(f"b._time_child({family!r}, {shape}, {args.steps})").items():
        rows[provider]["step_ms"] = ms
    return rows


def main(argv=None):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import hf_families

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(hf_families.FAMILIES))
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = []
    print(
        f"vocab {args.vocab}, seq {args.seq}, batch {args.batch}, hidden {args.hidden}, fp32; "
        f"step time: median of {args.steps}"
    )
    print(
        f"{'family':<11} {'stock MiB':>10} {'fused MiB':>10} {'ratio':>6} {'stock saved':>12} "
        f"{'fused saved':>12} {'stock ms':>9} {'fused ms':>9} {'loss diff':>10}"
    )
    for family in args.families.split(","):
        measured = measure(family, args)
        stock, fused = measured["stock"], measured["fused"]
        rows += [stock, fused]
        print(
            f"{family:<11} {stock['peak_mib']:>10.1f} {fused['peak_mib']:>10.1f} "
            f"{fused['peak_mib'] / stock['peak_mib']:>6.3f} {stock['saved_mib']:>12.1f} {fused['saved_mib']:>12.1f} "
            f"{stock['step_ms']:>9.1f} {fused['step_ms']:>9.1f} {abs(fused['loss'] - stock['loss']):>10.2g}",
            flush=True,
        )
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"hf_training_step_v{args.vocab}.csv")
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) + ["vocab", "seq", "batch", "hidden"])
            writer.writeheader()
            for row in rows:
                writer.writerow(dict(row, vocab=args.vocab, seq=args.seq, batch=args.batch, hidden=args.hidden))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
