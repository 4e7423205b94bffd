"""Turns measured results into the markdown table, the long-format CSV, the PNG plots and the summary line."""

import csv
import os
import re
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from cases import BYTES_MODEL, Case, floor_seconds, min_bytes
from load import BUSY_OTHER_CORES as LOAD_THRESHOLD

CSV_COLUMNS = (
    "provider",
    "loss",
    "mode",
    "dtype",
    "N",
    "C",
    "options",
    "metric",
    "unit",
    "p50",
    "p20",
    "p80",
    "check",
    "note",
    "busy",
    "other_cpu_cores",
    "load_avg_before",
    "load_avg_after",
    "device",
    "device_name",
    "torch_version",
    "fused_ce_version",
    "cuda_version",
    "timestamp",
)
OURS = "fused_ce"
MiB = 1 << 20
# The share of the copy bandwidth (byte floor / time) a case must reach to count as at the memory floor.
FLOOR_TARGET = 0.7
SHORT = {
    OURS: "fused",
    "eager-thp": "eager-thp",
    "compile-thp": "compile-thp",
    "torch": "eager",
    "torch_compile": "compile",
    "liger": "liger",
}


@dataclass
class CaseResult:
    case: Case
    check: str = "not run"
    times: dict = field(default_factory=dict)  # provider -> (p20, p50, p80) seconds
    memory: dict = field(default_factory=dict)  # provider -> peak extra bytes
    notes: dict = field(default_factory=dict)  # provider -> why it has no time or memory
    load: object = None  # load.Window over the case's timing, or None
    copy_bandwidth: float = None  # bytes/s of the copy probe timed in the case's rounds, or None

    def copy_bw(self, run_copy_bandwidth):
        """The copy bandwidth this case's byte floor uses: its own when measured, else the run's."""
        return self.copy_bandwidth or run_copy_bandwidth

    @property
    def ok(self):
        return self.check == "ok"

    def speedup(self, other):
        """time_other / time_fused_ce at the median, or None."""
        if OURS in self.times and other in self.times:
            return self.times[other][1] / self.times[OURS][1]
        return None

    def floor_fraction(self, copy_bandwidth):
        """fused_ce's byte floor / its median time: the share of the copy bandwidth it reaches, or None.
        `copy_bandwidth` (the run's) counts only where the case has no copy bandwidth of its own."""
        t = self.times.get(OURS)
        return None if t is None else floor_seconds(self.case, self.copy_bw(copy_bandwidth)) / t[1]

    def bandwidth(self, provider):
        """(p20, p50, p80) bytes/s of the minimum traffic; the p20 bandwidth comes from the p80 time."""
        t = self.times.get(provider)
        if t is None:
            return None
        b = min_bytes(self.case)
        return b / t[2], b / t[1], b / t[0]


def _fmt(x, digits=3):
    if x is None:
        return "–"
    if x == 0:
        return "0"
    mag = abs(x)
    return f"{x:.{max(0, digits - len(str(int(mag))))}f}" if mag >= 1 else f"{x:.{digits}g}"


def csv_rows(results, meta, providers):
    env = {
        k: meta[k] for k in ("device", "device_name", "torch_version", "fused_ce_version", "cuda_version", "timestamp")
    }
    rows = [
        dict(
            env,
            provider="copy",
            loss="-",
            mode="copy",
            dtype="fp32",
            N="",
            C="",
            options="",
            metric="copy_bandwidth",
            unit="GB/s",
            p50=meta["copy_bandwidth"] / 1e9,
            p20="",
            p80="",
            check="",
            note=f"dst.copy_(src) of {meta['copy_bytes'] // MiB} MiB, read+write bytes, fastest of 9",
        )
    ]
    for when in ("start", "end"):
        if meta.get(f"load_{when}") is not None:
            rows.append(
                dict(
                    env,
                    provider="machine",
                    loss="-",
                    mode="-",
                    dtype="",
                    N="",
                    C="",
                    options="",
                    metric="load_average_1min",
                    unit="",
                    p50=meta[f"load_{when}"],
                    p20="",
                    p80="",
                    check="",
                    note=f"os.getloadavg()[0] at the {when} of the run",
                )
            )
    if meta.get("load_warning"):
        rows.append(
            dict(
                env,
                provider="machine",
                loss="-",
                mode="-",
                dtype="",
                N="",
                C="",
                options="",
                metric="machine_busy",
                unit="",
                p50="",
                p20="",
                p80="",
                check="",
                busy="yes",
                note=meta["load_warning"],
            )
        )
    for r in results:
        c = r.case
        base = dict(
            env,
            loss=c.loss,
            mode=c.mode,
            dtype=c.dtype,
            N=c.N,
            C=c.C,
            options=c.options,
            check=r.check,
            **_load_columns(r.load),
        )
        copy_bw = r.copy_bw(meta["copy_bandwidth"])
        if r.copy_bandwidth:
            rows.append(
                dict(
                    base,
                    provider="copy",
                    metric="copy_bandwidth",
                    unit="GB/s",
                    p50=r.copy_bandwidth / 1e9,
                    p20="",
                    p80="",
                    note=f"dst.copy_(src) of {meta['copy_bytes'] // MiB} MiB timed in this "
                    "case's rounds, read+write bytes, median",
                )
            )
        rows.append(
            dict(
                base,
                provider="floor",
                metric="byte_floor",
                unit="ms",
                note=BYTES_MODEL,
                p50=floor_seconds(c, copy_bw) * 1e3,
                p20="",
                p80="",
            )
        )
        for p in providers:
            note = r.notes.get(p, "")
            t = r.times.get(p)
            rows.append(
                dict(
                    base,
                    provider=p,
                    metric="time",
                    unit="ms",
                    note=note,
                    **(
                        {"p20": t[0] * 1e3, "p50": t[1] * 1e3, "p80": t[2] * 1e3}
                        if t
                        else {"p20": "", "p50": "", "p80": ""}
                    ),
                )
            )
            if p in r.memory:
                rows.append(
                    dict(
                        base,
                        provider=p,
                        metric="peak_extra_memory",
                        unit="MiB",
                        note=meta["memory_note"],
                        p50=r.memory[p] / MiB,
                        p20="",
                        p80="",
                    )
                )
            bw = r.bandwidth(p)
            if bw:
                rows.append(
                    dict(
                        base,
                        provider=p,
                        metric="bandwidth",
                        unit="GB/s",
                        note=BYTES_MODEL,
                        p20=bw[0] / 1e9,
                        p50=bw[1] / 1e9,
                        p80=bw[2] / 1e9,
                    )
                )
                rows.append(
                    dict(
                        base,
                        provider=p,
                        metric="copy_bandwidth_fraction",
                        unit="%",
                        note="",
                        **{k: 100 * v / copy_bw for k, v in zip(("p20", "p50", "p80"), bw)},
                    )
                )
            if p != OURS and r.speedup(p) is not None:
                rows.append(
                    dict(
                        base,
                        provider=OURS,
                        metric=f"speedup_vs_{p}",
                        unit="x",
                        note=f"time_{p} / time_{OURS} at p50",
                        p50=r.speedup(p),
                        p20="",
                        p80="",
                    )
                )
    return rows


def _load_columns(w):
    if w is None:
        return {}
    return {
        "busy": "yes" if w.busy else "no",
        "other_cpu_cores": "" if w.other_cores is None else w.other_cores,
        "load_avg_before": "" if w.load_before is None else w.load_before,
        "load_avg_after": "" if w.load_after is None else w.load_after,
    }


def _load_cell(w):
    """Other processes' CPU use (cores) during the case's timing; bold and 'busy' above the threshold."""
    if w is None or w.other_cores is None:
        return "–"
    return f"**{w.other_cores:.2f} busy**" if w.busy else f"{w.other_cores:.2f}"


def _per_case_copy_range(results):
    bws = [r.copy_bandwidth for r in results if r.copy_bandwidth]
    return f", {min(bws) / 1e9:.1f}–{max(bws) / 1e9:.1f} GB/s in the cases' own rounds" if bws else ""


def _load_line(meta):
    def fmt(v):
        return "unknown" if v is None else f"{v:.2f}"

    return (
        f"1-minute load average: {fmt(meta.get('load_start'))} at the start, {fmt(meta.get('load_end'))} at "
        "the end (the latter counts this benchmark's own threads)."
    )


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def at_floor(results, copy_bandwidth):
    """(cases reaching FLOOR_TARGET of the copy bandwidth, cases measured): labels, and the count measured."""
    fractions = [(r.case.label, r.floor_fraction(copy_bandwidth)) for r in results]
    measured = [(label, f) for label, f in fractions if f is not None]
    return [label for label, f in measured if f >= FLOOR_TARGET], len(measured)


def _floor_line(results, meta):
    reached, measured = at_floor(results, meta["copy_bandwidth"])
    return (
        f"At ≥{FLOOR_TARGET:.0%} of the copy bandwidth (time ≤ byte floor / {FLOOR_TARGET}): {len(reached)} of "
        f"{measured} cases" + (f" ({', '.join(reached)})" if reached else "") + "."
    )


def markdown(results, meta, providers):
    others = [p for p in providers if p != OURS]
    head = (
        ["case", "check", f"{OURS} ms p50 [p20–p80]", "byte floor ms", "% copy BW (floor / time)"]
        + [f"× vs {SHORT[p]}" for p in others]
        + [f"{p} ms p50 [p20–p80]" for p in others]
        + [
            "fused GB/s",
            "copy GB/s",
            "peak extra MiB (" + " / ".join(SHORT[p] for p in providers) + ")",
            "others' CPU, cores",
        ]
    )
    lines = [
        f"Device: {meta['device_name']} ({meta['device']}), torch {meta['torch_version']}, "
        f"fused_ce {meta['fused_ce_version']}, threads {meta['threads']}. "
        f"Measured copy bandwidth: {meta['copy_bandwidth'] / 1e9:.1f} GB/s (read+write) at the end of the run"
        + _per_case_copy_range(results)
        + ". "
        + _load_line(meta),
        "",
    ]
    if meta.get("thp_note"):
        lines += [meta["thp_note"] + ".", ""]
    if meta.get("load_warning"):
        lines += [f"**{meta['load_warning']}**", ""]
    lines += [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    footnotes = []

    def time_cell(r, p):
        t = r.times.get(p)
        if t:
            return f"{_fmt(t[1] * 1e3)} [{_fmt(t[0] * 1e3)}–{_fmt(t[2] * 1e3)}]"
        footnotes.append(f"{r.case.label}, {p}: {r.notes.get(p, 'not measured')}")
        return f"skipped[{len(footnotes)}]"

    for r in results:
        copy_bw = r.copy_bw(meta["copy_bandwidth"])
        cells = [
            r.case.label,
            "ok" if r.ok else f"**{r.check}**",
            time_cell(r, OURS),
            _fmt(floor_seconds(r.case, copy_bw) * 1e3),
        ]
        fraction = r.floor_fraction(meta["copy_bandwidth"])
        cells.append(_fmt(100 * fraction) if fraction is not None else "–")
        cells += [(_fmt(r.speedup(p), 2) + "×") if r.speedup(p) else "–" for p in others]
        cells += [time_cell(r, p) for p in others]
        bw = r.bandwidth(OURS)
        cells.append(_fmt(bw[1] / 1e9) if bw else "–")
        cells.append(_fmt(copy_bw / 1e9))
        cells.append(" / ".join(_fmt(r.memory[p] / MiB) if p in r.memory else "–" for p in providers))
        cells.append(_load_cell(r.load))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        _floor_line(results, meta),
        "",
        f"Byte floor: {BYTES_MODEL}; its time is those bytes at the copy bandwidth, and "
        "% copy BW is that time over fused_ce's median (fused GB/s over the copy bandwidth). Copy GB/s: "
        "on CPU, the median of a copy timed once in every round of the case, beside the providers (the "
        "machine's bandwidth varies over minutes); elsewhere, the run's copy above.",
        meta["memory_note"] + ".",
        "Providers are timed in interleaved rounds (A B A B ...). Others' CPU: CPU time that processes other "
        "than this benchmark took while the case was timed, in cores (from /proc/stat); above "
        f"{LOAD_THRESHOLD} the case is marked busy.",
    ]
    if footnotes:
        lines += [""] + [f"[{i}] {text}" for i, text in enumerate(footnotes, 1)]
    return "\n".join(lines) + "\n"


def _slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def plots(results, out_dir, providers):
    """Time vs C and peak memory vs C, one line per provider, for every series with at least two C values."""
    groups = {}
    for r in results:
        c = r.case
        if c.series:
            groups.setdefault((c.series, c.loss, c.mode, c.dtype, c.options), []).append(r)
    paths = []
    for (series, loss, mode, dtype, options), rs in groups.items():
        rs = sorted(rs, key=lambda r: r.case.C)
        cs = [r.case.C for r in rs]
        if len(set(cs)) < 2:
            continue
        title = f"{loss} {mode} {dtype}" + ("" if options == "none" else f" {options}") + f" ({series})"
        for metric, ylabel, get in (
            (
                "time",
                "time per call, ms (p50, bars p20–p80)",
                lambda r, p: tuple(v * 1e3 for v in r.times[p]) if p in r.times else None,
            ),
            ("memory", "peak extra memory, MiB", lambda r, p: (r.memory[p] / MiB,) * 3 if p in r.memory else None),
        ):
            fig, ax = plt.subplots(figsize=(7.5, 4.8))
            drawn = False
            for p in providers:
                pts = [(r.case.C, get(r, p)) for r in rs if get(r, p) is not None]
                if not pts:
                    continue
                x = [c for c, _ in pts]
                lo, mid, hi = zip(*(v for _, v in pts))
                yerr = [[m - a for a, m in zip(lo, mid)], [b - m for b, m in zip(hi, mid)]]
                ax.errorbar(x, mid, yerr=yerr if metric == "time" else None, marker="o", capsize=3, label=p)
                drawn = True
            if not drawn:
                plt.close(fig)
                continue
            if max(cs) / min(cs) >= 10:
                ax.set_xscale("log")
            ax.set_xticks(cs)
            ax.set_xticklabels([f"{r.case.C}\nN={r.case.N}" for r in rs])
            ax.minorticks_off()
            ax.set_xlabel("C, number of classes (N rows below)")
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend()
            fig.tight_layout()
            path = os.path.join(out_dir, f"{metric}_vs_C_{_slug(f'{loss}_{mode}_{dtype}_{options}_{series}')}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def summary(results, providers, copy_bandwidth=None):
    parts = []
    for p in providers:
        if p == OURS:
            continue
        ratios = [(r.speedup(p), r.case.label) for r in results if r.speedup(p) is not None]
        name = {"torch": "torch eager"}.get(p, p)
        if ratios:
            worst, best = min(ratios), max(ratios)
            parts.append(f"fused_ce vs {name}: worst {worst[0]:.2f}x ({worst[1]}), best {best[0]:.2f}x ({best[1]})")
        else:
            parts.append(f"fused_ce vs {name}: no measurement")
    if copy_bandwidth:
        reached, measured = at_floor(results, copy_bandwidth)
        parts.append(f"at >={FLOOR_TARGET:.0%} of copy bandwidth: {len(reached)} of {measured} cases")
    busy = [r for r in results if r.load is not None and r.load.busy]
    if busy:
        parts.append(f"MACHINE BUSY during {len(busy)} of {len(results)} cases: timings unreliable")
    bad = [r for r in results if not r.ok]
    parts.append(
        f"correctness: all {len(results)} cases ok"
        if not bad
        else f"correctness: {len(bad)} of {len(results)} cases FAILED ({'; '.join(r.case.label for r in bad)})"
    )
    return "SUMMARY: " + "; ".join(parts)
