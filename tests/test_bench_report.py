"""The benchmark's report logic: the byte floor model, fused_ce's share of the copy bandwidth, the table that
leads with torch at its best (the THP providers), the correctness comparison, and the THP worker process.
No timing is asserted: times are made up, except the worker's, which are only checked to exist."""

import os
import sys

import pytest
import torch

pytest.importorskip("matplotlib", reason="the benchmark's report needs matplotlib (the bench extra)")
pytest.importorskip("tqdm", reason="the benchmark needs tqdm (the bench extra)")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import cases
import correctness
import load
import report
import thp

MB = 10**6
META = {
    "device": "cpu",
    "device_name": "test cpu",
    "torch_version": "x",
    "fused_ce_version": "y",
    "cuda_version": "",
    "timestamp": "t",
    "threads": 2,
    "copy_bandwidth": 10e9,
    "copy_bytes": 1 << 20,
    "memory_note": "memory note",
    "load_start": 1.0,
    "load_end": 1.0,
}


@pytest.mark.parametrize(
    "loss,feature,mode,elements_moved",
    [
        ("ce", "none", "forward", 1),  # logits read once
        ("ce", "none", "backward", 2),  # logits read again, gradient written
        ("ce", "none", "full", 3),  # logits read twice, gradient written once
        ("ce", "soft", "full", 5),  # the N×C target is read in both passes too
        ("bce", "none", "forward", 2),
        ("bce", "pos_weight", "full", 5),
    ],
)
def test_byte_floor_counts_every_nxc_tensor_each_pass_must_touch(loss, feature, mode, elements_moved):
    case = cases.Case(loss, mode, "bf16", 100, 1000, feature)
    assert cases.min_bytes(case) == elements_moved * 100 * 1000 * 2
    assert cases.floor_seconds(case, 1e9) == pytest.approx(cases.min_bytes(case) / 1e9, rel=1e-12)


def test_byte_floor_skips_the_logits_of_ignored_rows_and_inputs_ignore_exactly_that_many():
    case = cases.Case("ce", "full", "fp32", 100, 1000, "ignore", 0.3)
    # 70 rows read twice, all 100 gradient rows written
    assert cases.min_bytes(case) == (2 * 70 + 100) * 1000 * 4
    inputs = cases.make_inputs(case, "cpu")
    assert int((inputs.target == cases.IGNORE_INDEX).sum()) == 30


def _result(label_c, fused_s, **others_s):
    r = report.CaseResult(cases.Case("ce", "full", "fp32", 1000, label_c), check="ok")
    r.times["fused_ce"] = (fused_s * 0.9, fused_s, fused_s * 1.1)
    for p, t in others_s.items():
        r.times[p.replace("_", "-")] = (t, t, t)
    return r


def test_floor_fraction_and_the_cases_at_seventy_percent():
    # floor of a 1000×C fp32 full case: 3 · 4 · 1000 · C bytes at 10 GB/s
    floor_s = 12e3 * 5000 / 10e9
    fast = _result(5000, floor_s / 0.75)
    slow = _result(6000, 12e3 * 6000 / 10e9 / 0.65)
    unmeasured = report.CaseResult(cases.Case("ce", "full", "fp32", 10, 10))
    assert fast.floor_fraction(10e9) == pytest.approx(0.75)
    assert slow.floor_fraction(10e9) == pytest.approx(0.65)
    assert unmeasured.floor_fraction(10e9) is None
    assert report.at_floor([fast, slow, unmeasured], 10e9) == ([fast.case.label], 2)
    assert "at >=70% of copy bandwidth: 1 of 2 cases" in report.summary([fast, slow], ["fused_ce"], 10e9)


def test_table_leads_with_torch_at_its_best():
    r = _result(5000, 0.010, eager_thp=0.030, compile_thp=0.020, torch=0.100)
    providers = ["fused_ce", "eager-thp", "compile-thp", "torch"]
    text = report.markdown([r], dict(META, thp_note="THP providers: probe"), providers)
    lines = text.splitlines()
    head = next(line for line in lines if line.startswith("| case"))
    row = next(line for line in lines if line.startswith("| ce fp32 full"))
    columns = [c.strip() for c in head.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert columns[2:8] == [
        "fused_ce ms p50 [p20–p80]",
        "byte floor ms",
        "% copy BW (floor / time)",
        "× vs eager-thp",
        "× vs compile-thp",
        "× vs eager",
    ]
    assert cells[3] == "6.00"  # 3 · 4 · 1000 · 5000 bytes at 10 GB/s, in ms
    assert cells[4] == "60.0"  # 6 ms floor / 10 ms
    assert cells[5:8] == ["3.0×", "2.0×", "10×"]
    assert "THP providers: probe." in text
    assert "At ≥70% of the copy bandwidth (time ≤ byte floor / 0.7): 0 of 1 cases." in text
    rows = report.csv_rows([r], META, providers)
    (floor_row,) = [row for row in rows if row["metric"] == "byte_floor"]
    assert floor_row["p50"] == pytest.approx(6.0)


def test_a_cases_own_copy_bandwidth_sets_its_floor_and_the_runs_serves_the_others():
    own = _result(5000, 0.010)
    own.copy_bandwidth = 20e9  # the copy probe in this case's rounds: twice the run's 10 GB/s
    other = _result(6000, 0.010)
    assert own.floor_fraction(10e9) == pytest.approx(0.3)  # 60e6 bytes at 20 GB/s = 3 ms, of 10 ms
    assert other.floor_fraction(10e9) == pytest.approx(0.72)  # 72e6 bytes at 10 GB/s
    assert report.at_floor([own, other], 10e9) == ([other.case.label], 2)
    text = report.markdown([own, other], META, ["fused_ce"])
    assert "20.0–20.0 GB/s in the cases' own rounds" in text
    row = next(line for line in text.splitlines() if line.startswith("| ce fp32 full 1000x5000"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "3.00" and cells[4] == "30.0" and "20.0" in cells
    rows = report.csv_rows([own, other], META, ["fused_ce"])
    floors = [row["p50"] for row in rows if row["metric"] == "byte_floor"]
    assert floors == [pytest.approx(3.0), pytest.approx(7.2)]
    assert [row["p50"] for row in rows if row["metric"] == "copy_bandwidth" and row["C"] == 5000] == [20.0]


def test_the_busier_of_two_load_windows_wins():
    quiet = load.Window(1.0, 1.0, 0.1, 2.0)
    busy = load.Window(1.0, 1.0, 0.5, 2.0)
    short_spike = load.Window(1.0, 1.0, 0.9, 0.1)  # too short to flag a case
    assert load.busier(quiet, busy) is busy and load.busier(busy, quiet) is busy
    assert load.busier(busy, short_spike) is busy
    assert load.busier(None, quiet) is quiet and load.busier(quiet, None) is quiet
    assert load.busier(None, None) is None


def test_correctness_comparison_flags_what_assert_close_would(monkeypatch):
    monkeypatch.setattr(correctness, "BLOCK", 7)  # several blocks, the bad element in a later one
    expected = torch.linspace(-1, 1, 50, dtype=torch.float64)
    assert correctness._compare("grad", expected.clone(), expected, 1e-4, 1e-5) is None
    near = expected + 1e-6 * expected.abs()
    assert correctness._compare("grad", near, expected, 1e-4, 1e-5) is None
    off = expected.clone()
    off[23] += 0.01
    message = correctness._compare("grad", off, expected, 1e-4, 1e-5)
    assert message.startswith("grad: 1 of 50 elements differ") and "at flat index 23" in message
    nan = expected.clone()
    nan[40] = float("nan")
    assert "at flat index 40" in correctness._compare("loss", nan, expected, 1e-4, 1e-5)
    inf = expected.clone()
    inf[3] = float("inf")
    assert correctness._compare("loss", inf, inf.clone(), 1e-4, 1e-5) is None
    assert "shape" in correctness._compare("grad", expected[:10], expected, 1e-4, 1e-5)


def test_thp_worker_runs_with_the_switch_on_and_times_a_group():
    before = os.environ.get("THP_MEM_ALLOC_ENABLE")
    worker = thp.Worker()
    try:
        assert os.environ.get("THP_MEM_ALLOC_ENABLE") == before  # the switch is the worker's only
        switch, huge_page_bytes = worker.ready()
        assert switch == "1"
        assert huge_page_bytes is None or huge_page_bytes >= 0
        group = [cases.Case("ce", mode, "fp32", 64, 100, repeats=2) for mode in ("forward", "full")]
        per_case = worker.time_group(group, ["eager-thp"], 1, 0)
        assert len(per_case) == 2
        for samples, errors, window in per_case:
            assert errors == {} and len(samples["eager-thp"]) == 2 and all(s > 0 for s in samples["eager-thp"])
            assert window.seconds > 0
        with pytest.raises(RuntimeError, match="Unavailable|KeyError"):
            worker.time_group(group, ["torch"], 1, 0)  # not a THP provider: the worker says so, and serves on
        assert len(worker.time_group(group[:1], ["eager-thp"], 1, 0)) == 1
    finally:
        worker.close()
