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
Time: the median of --steps steps after that first one (wall clock, zero_grad(set_to_none=True) between steps,
as the Trainer does). Printed as a table; with --out, written as CSV too.
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


def _child(family, provider, vocab, seq, batch, hidden, steps):
    """Runs in a fresh process: one (family, provider) measurement, printed as JSON."""
    import torch

    import hf_families
    import timing
    from saved_tensors import SavedTensors
    from fused_ce.integrations.transformers import use_fused_ce

    timing._fixed_mmap_threshold()
    torch.manual_seed(0)
    model = hf_families.build(family, vocab, hidden).train()
    if provider == "fused":
        use_fused_ce(model)
    ids = torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    inputs = dict(input_ids=ids, labels=ids)

    def step():
        with SavedTensors() as saved:
            loss = model(**inputs).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return saved, loss.item()

    baseline = timing._rss_bytes("VmRSS")
    if not timing._reset_rss_peak():
        raise RuntimeError("cannot reset the RSS high-water mark (/proc/self/clear_refs)")
    saved, loss = step()
    peak = timing._rss_bytes("VmHWM") - baseline
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    print(json.dumps(dict(family=family, provider=provider, loss=loss, peak_mib=peak / MiB,
                          saved_mib=saved.bytes / MiB, step_ms=1e3 * statistics.median(seconds))))


def measure(family, provider, args):
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys; sys.path.insert(0, {here!r}); import hf_training_step as b; "
            f"b._child({family!r}, {provider!r}, {args.vocab}, {args.seq}, {args.batch}, {args.hidden}, {args.steps})")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{family}/{provider} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    print(f"vocab {args.vocab}, seq {args.seq}, batch {args.batch}, hidden {args.hidden}, fp32; "
          f"step time: median of {args.steps}")
    print(f"{'family':<11} {'stock MiB':>10} {'fused MiB':>10} {'ratio':>6} {'stock saved':>12} "
          f"{'fused saved':>12} {'stock ms':>9} {'fused ms':>9} {'loss diff':>10}")
    for family in args.families.split(","):
        stock, fused = (measure(family, provider, args) for provider in PROVIDERS)
        rows += [stock, fused]
        print(f"{family:<11} {stock['peak_mib']:>10.1f} {fused['peak_mib']:>10.1f} "
              f"{fused['peak_mib'] / stock['peak_mib']:>6.3f} {stock['saved_mib']:>12.1f} {fused['saved_mib']:>12.1f} "
              f"{stock['step_ms']:>9.1f} {fused['step_ms']:>9.1f} {abs(fused['loss'] - stock['loss']):>10.2g}",
              flush=True)
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
