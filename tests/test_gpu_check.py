"""``python -m ukd.gpu_check`` on a machine without CUDA: the one-line refusal, and every piece that runs without a GPU
(case list, comparison verdicts, the timer, the reports, the worker time box, the training-step clone)."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ukd.gpu_check import EXIT_NOT_CHECKED
from ukd.gpu_check.cases import (
    CORRECTNESS_CASES,
    IMAGENET,
    TIMING_SHAPES,
    CaseSpec,
    TimingShape,
    build_case,
    build_timing_case,
    grad_tolerance,
)
from ukd.gpu_check.cli import main, out_dir_problem, parse_nvcc_version, plan_timeout, run_worker
from ukd.gpu_check.compare import LossOutputs, Verdict, check_spec
from ukd.gpu_check.report import Check, PartResult, Report, render_markdown, write_reports
from ukd.gpu_check.timing import (
    CudaEventTimer,
    Deadline,
    Timing,
    WallTimer,
    make_timer,
    measure_interleaved,
    must_move_bytes,
)
from ukd.testing import BENCH_SHAPES, bench_case, run_loss

ROOT = Path(__file__).resolve().parents[1]
SMALL = CaseSpec("small", 3, 6, ((5, 3, 3), (4,)), ((7, 2, 2),), seed=3)


# ------------------------------------------------------------------------------------------------ the command
def test_no_cuda_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "ukd.gpu_check", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == EXIT_NOT_CHECKED == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ukd gpu_check: error: no CUDA device (torch ")
    assert lines[0].endswith("; nothing was checked")
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []  # OUT_DIR not even created


def test_unusable_out_dir_is_one_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for target, words in ((blocker / "out", "is not a directory"), (blocker, "exists and is not a directory")):
        assert main([str(target)]) == EXIT_NOT_CHECKED
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err and err.startswith("ukd gpu_check: error: OUT_DIR")
    assert main([str(tmp_path / "out"), "--parts", "nonsense"]) == EXIT_NOT_CHECKED
    assert "unknown part" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_out_dir_problem_creates_nothing(tmp_path: Path) -> None:
    assert out_dir_problem(tmp_path) is None
    assert out_dir_problem(tmp_path / "new" / "deeper") is None
    assert not (tmp_path / "new").exists()


def test_plan_timeout_keeps_the_later_parts_reserve() -> None:
    assert plan_timeout(remaining=300, cap=170, min_s=30, reserve=110) == 170
    assert plan_timeout(remaining=200, cap=170, min_s=30, reserve=110) == 90
    assert plan_timeout(remaining=130, cap=170, min_s=30, reserve=110) is None  # 20 s < min_s: skipped


def test_parse_nvcc_version() -> None:
    text = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 13.0, V13.0.88\nBuild cuda_13.0\n"
    assert parse_nvcc_version(text) == "13.0 (V13.0.88)"
    assert parse_nvcc_version("no version here") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the parts would really run on this machine's GPU")
def test_a_failing_part_is_recorded_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The whole command with the CUDA check faked away: every correctness case fails (no CUDA here) and the part
    goes on to the next case, the next part is skipped for want of time, both reports are written, one progress
    line per part, exit status 1."""
    from ukd.gpu_check import cli, parts

    monkeypatch.setattr(cli, "cuda_problem", lambda: None)
    monkeypatch.setattr(cli, "collect_environment", lambda: _fabricated_report().environment)
    monkeypatch.setitem(parts.PARTS, "compile-step", parts.PARTS["compile-step"]._replace(min_s=10_000))
    out = tmp_path / "out"
    assert main([str(out), "--parts", "correctness,compile-step", "--budget", "60"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("ukd gpu_check: ") for line in lines)
    assert "[1/2] correctness: fail" in lines[1] and "[2/2] compile-step: skipped (optional)" in lines[2]
    assert lines[3].startswith("ukd gpu_check: FAIL")
    data = json.loads((out / "gpu_check.json").read_text())
    correctness, compiled = data["parts"]
    assert correctness["status"] == "fail" and correctness["checks"]
    assert all(c["passed"] is False and "could not be run" in c["detail"] for c in correctness["checks"])
    assert compiled["status"] == "skipped" and data["ok"] is False and data["finished"]
    assert (out / "gpu_check.md").read_text().startswith("# ukd gpu_check: FAIL")


# ------------------------------------------------------------------------------------------------ the parts' runner
def _worker(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def test_run_worker_records_crash_timeout_and_result(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    crashed = run_worker("p", "crash", _worker("import sys; print('boom'); sys.exit(3)"), 30, path)
    assert crashed.status == "fail" and "status 3" in crashed.error and "boom" in crashed.error

    t0 = time.perf_counter()
    hung = run_worker("p", "hang", _worker("import time; time.sleep(60)"), 1.0, path)
    assert hung.status == "fail" and "timed out after 1 s" in hung.error
    assert time.perf_counter() - t0 < 30  # killed, not waited for

    silent = run_worker("p", "silent", _worker("pass"), 30, path)
    assert silent.status == "fail" and "wrote no result" in silent.error

    good = PartResult("p", "good", checks=[Check("it works", True, "1.0 s")])
    code = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
    done = run_worker("p", "good", _worker(code, str(path), json.dumps(good.to_dict())), 30, path)
    assert done.status == "pass" and done.error is None and done.checks[0].name == "it works"
    assert done.elapsed_s > 0


# ------------------------------------------------------------------------------------------------ the cases
def test_correctness_cases_cover_the_issue() -> None:
    specs = CORRECTNESS_CASES
    assert len({s.name for s in specs}) == len(specs)
    assert {s.feat_dtype for s in specs} >= {torch.float32, torch.bfloat16}
    assert min(s.k for s in specs) == 2 and max(s.k for s in specs) == 32000
    assert min(s.batch for s in specs) == 1 and max(s.batch for s in specs) == 256
    assert any(s.channels_last for s in specs) and any(not s.channels_last for s in specs)
    assert any(st[0] % 2 for s in specs for st in (*s.student, *s.teacher))  # odd channel counts
    assert any(len(st) == 1 for s in specs for st in (*s.student, *s.teacher))  # a pooled (B, C) input
    imagenet_256 = {s.feat_dtype for s in specs if s.student == IMAGENET and s.batch == 256}
    assert imagenet_256 == {torch.float32, torch.bfloat16}
    assert any(not s.noise for s in specs) and any(s.logvar_spread > 2.5 for s in specs)
    assert any(dict(s.options).get("gauss_weight", 0) != 0 for s in specs)


def test_timing_shapes_are_the_benchmarks_and_imagenet_256() -> None:
    rows = {(t.shape, t.batch, t.feat_dtype) for t in TIMING_SHAPES}
    for name, shape in BENCH_SHAPES.items():
        assert (name, shape["batch"], torch.float32) in rows
    assert ("imagenet", 256, torch.float32) in rows


def test_small_cases_build_as_specified() -> None:
    for spec in (s for s in CORRECTNESS_CASES if s.feature_elements() < 200_000):
        case = build_case(spec)
        assert case.student_logits.shape == (spec.batch, spec.k)
        assert case.student_weight.shape == (2 * spec.k, sum(st[0] for st in spec.student))
        assert all(t.requires_grad for t in case.tensors())
        for f, st in zip([*case.student_feats, *case.teacher_feats], [*spec.student, *spec.teacher]):
            assert f.dtype == spec.feat_dtype and tuple(f.shape[1:]) == st, spec.name
            if len(st) == 3 and st[0] > 1 and st[1] * st[2] > 1:
                assert f.is_contiguous(memory_format=torch.channels_last) == spec.channels_last, spec.name
        assert case.student_logits.dtype == case.student_weight.dtype == torch.float32


def test_timing_case_layout_and_bytes() -> None:
    case = build_timing_case(TimingShape("t", "cifar", 2, torch.bfloat16, True))
    assert all(
        f.dtype == torch.bfloat16 and f.is_contiguous(memory_format=torch.channels_last) for f in case.tensors()[:6]
    )
    assert all(f.requires_grad for f in case.student_feats) and not any(f.requires_grad for f in case.teacher_feats)
    # by hand from the shape table, batch 2, float32: every feature read once, the student's feature gradients
    # written once, both heads (2K x sum C) read and their gradients written
    shape, batch, k = BENCH_SHAPES["cifar"], 2, BENCH_SHAPES["cifar"]["k"]
    student = sum(c * h * w for c, h, w in shape["student"])
    teacher = sum(c * h * w for c, h, w in shape["teacher"])
    channels = sum(c for c, _, _ in shape["student"]) + sum(c for c, _, _ in shape["teacher"])
    expected = 4 * (batch * (student + teacher) + batch * student + 2 * 2 * k * channels)
    assert must_move_bytes(bench_case("cifar", batch=batch)) == expected


# ------------------------------------------------------------------------------------------------ the verdict
def _corrupting(index: int, how) -> callable:
    """A runner that is the reference except that gradient ``index`` (or the loss, index -1) is spoiled."""

    def runner(case, backend, **overrides):
        loss, comps, grads = run_loss(case, "reference", **overrides)
        if backend == "broken":
            if index < 0:
                loss = how(loss)
            else:
                grads[index] = how(grads[index])
        return loss, comps, grads

    return runner


def test_reference_in_float32_passes_against_float64() -> None:
    (verdict,) = check_spec(SMALL, ["reference"], "cpu")
    assert verdict.passed and verdict.error is None
    names = [q.name for q in verdict.quantities]
    assert names[:4] == ["loss", "component:dist", "component:supp", "component:logit"]  # gauss weight 0: off
    assert len([n for n in names if n.startswith("grad:")]) == len(build_case(SMALL).tensors())
    spec = SMALL._replace(options=(("gauss_weight", 0.5),))
    assert "component:gauss" in [q.name for q in check_spec(spec, ["reference"], "cpu")[0].quantities]


@pytest.mark.parametrize(
    ("index", "how", "note"),
    [
        (4, lambda g: g * 1.01, ""),  # student_weight, 1% off: far past 2e-4
        (0, lambda g: None, "missing"),
        (2, lambda g: g.to(torch.float64), "dtype"),
        (-1, lambda loss: loss * float("nan"), "non-finite"),
    ],
)
def test_a_wrong_result_fails_its_verdict(index: int, how, note: str) -> None:
    good, bad = check_spec(SMALL, ["reference", "broken"], "cpu", runner=_corrupting(index, how))
    assert good.passed and not bad.passed
    (failure,) = bad.failures()
    names = ["loss"] if index < 0 else [f"grad:{build_case(SMALL).names()[index]}"]
    assert failure.name in names and note in failure.note
    assert failure.name in bad.summary()


def test_a_backend_that_raises_fails_and_the_others_still_run() -> None:
    def runner(case, backend, **overrides):
        if backend == "raises":
            raise RuntimeError("kernel exploded")
        return run_loss(case, "reference", **overrides)

    raised, good = check_spec(SMALL, ["raises", "reference"], "cpu", runner=runner)
    assert not raised.passed and "kernel exploded" in raised.error and good.passed


def test_bf16_gradients_are_judged_at_two_ulps() -> None:
    assert grad_tolerance(torch.bfloat16, torch.float32) == 2 * torch.finfo(torch.bfloat16).eps
    assert grad_tolerance(torch.float32, torch.float32) == 2e-4
    spec = SMALL._replace(feat_dtype=torch.bfloat16, channels_last=True)
    (verdict,) = check_spec(spec, ["reference"], "cpu")
    feat = next(q for q in verdict.quantities if q.name == "grad:student_feats[0]")
    assert verdict.passed and feat.tolerance == grad_tolerance(torch.bfloat16, torch.float32)


def test_loss_outputs_match_run_loss() -> None:
    case = build_case(SMALL)
    out = LossOutputs(*run_loss(case, "reference"))
    assert out.loss.shape == () and set(out.components) == {"dist", "gauss", "supp", "logit"}
    assert len(out.grads) == len(case.tensors())
    assert Verdict("c", "b", ()).passed is False  # nothing compared is not a pass


# ------------------------------------------------------------------------------------------------ the timer
def test_timer_on_cpu_times_a_known_sleep() -> None:
    calls = {"n": 0}

    def count() -> None:
        calls["n"] += 1

    timings = measure_interleaved({"sleep": lambda: time.sleep(0.002), "count": count}, device="cpu", warmup=2, reps=5)
    assert calls["n"] == 2 + 5
    for timing in timings.values():
        assert len(timing.samples_ms) == 5 and all(s > 0 for s in timing.samples_ms)
        assert timing.median_ms == statistics.median(timing.samples_ms)
        assert timing.min_ms <= timing.median_ms <= timing.max_ms
    assert timings["sleep"].min_ms >= 2.0 * 0.99  # time.sleep sleeps at least that long


def test_timer_stops_at_the_deadline_and_picks_the_device_clock() -> None:
    timings = measure_interleaved(
        {"x": lambda: None}, device="cpu", warmup=0, reps=100, min_reps=3, deadline=Deadline(time.time() - 1)
    )
    assert len(timings["x"].samples_ms) == 3
    assert Timing((1.0, 5.0, 3.0)).median_ms == 3.0 and Timing((1.0, 2.0, 3.0, 4.0)).median_ms == 2.5
    assert isinstance(make_timer("cpu"), WallTimer) and isinstance(make_timer("cuda"), CudaEventTimer)
    assert Deadline.after(10).remaining() > 9 and Deadline(time.time() - 1).expired()


# ------------------------------------------------------------------------------------------------ the reports
def _fabricated_report(optional_only: bool = False) -> Report:
    env = {
        "machine": {"hostname": "gpu-box", "platform": "Linux-x86_64", "cpus": 16},
        "gpu": {"name": "NVIDIA H200", "capability": "9.0", "memory_GiB": 139.8, "multiprocessors": 132},
        "versions": {"torch": "2.11.0+cu130", "cuda": "13.0", "triton": "3.6.0", "nvcc": "13.0 (V13.0.88)"},
    }
    build = PartResult("build", "JIT build", [Check("extension built", True, "71.2 s")], {"build_s": 71.2})
    build.data["ratio"] = math.nan
    correctness = PartResult(
        "correctness",
        "against the reference",
        [
            Check("cifar-b64-fp32 / triton", True, "worst err 3e-6"),
            Check("cifar-b64-fp32 / cuda", optional_only, "grad:student_weight: err 1.0e-02 / tol 2.0e-04"),
        ],
    )
    row = {
        "shape": "imagenet B=256",
        "batch": 256,
        "bytes": 1_200_000_000,
        "reps": 50,
        "copy": {"median_ms": 0.30, "min_ms": 0.29, "GBps": 4000.0},
        "variants": {
            "eager": {
                "median_ms": 3.0,
                "min_ms": 2.9,
                "GBps": 400.0,
                "copy_fraction": 0.1,
                "peak_MB": 900.0,
                "x_eager": 1.0,
                "x_compile": 0.5,
            },
            "triton": {
                "median_ms": 0.5,
                "min_ms": 0.49,
                "GBps": 2400.0,
                "copy_fraction": 0.6,
                "peak_MB": 12.0,
                "x_eager": 6.0,
                "x_compile": 3.0,
            },
            "cuda": {"error": "RuntimeError: no kernel | for this"},
        },
    }
    timing = PartResult("timing", "timing", [Check("imagenet B=256: every variant timed", True, "")], {"rows": [row]})
    compiled = PartResult("compile-step", "compile", [Check("reduce-overhead", False, "skips 1", required=False)])
    compiled.required = False
    skipped = PartResult("step-cuda", "step", skipped="3 s of the budget left")
    parts = [build, correctness, timing, compiled] + ([] if optional_only else [skipped])
    return Report(
        env,
        parts,
        started="2026-12-01T10:00:00+00:00",
        finished="2026-12-01T10:05:00+00:00",
        elapsed_s=300.4,
        budget_s=330,
    )


def test_reports_json_schema_and_markdown_table(tmp_path: Path) -> None:
    report = _fabricated_report()
    json_path, md_path = write_reports(report, tmp_path)
    data = json.loads(json_path.read_text())
    assert set(data) == {
        "schema",
        "ok",
        "started",
        "finished",
        "elapsed_s",
        "budget_s",
        "environment",
        "parts",
        "timings",
    }
    assert data["schema"] == "ukd.gpu_check/1" and data["ok"] is False
    assert [p["status"] for p in data["parts"]] == ["pass", "fail", "pass", "fail", "skipped"]
    part_keys = {"name", "title", "status", "checks", "data", "error", "skipped", "elapsed_s", "required"}
    assert all(set(p) == part_keys for p in data["parts"])
    assert set(data["parts"][1]["checks"][1]) == {"name", "passed", "detail", "required", "data"}
    assert data["timings"][0]["variants"]["triton"]["GBps"] == 2400.0
    assert PartResult.from_dict(data["parts"][1]) == report.parts[1]
    assert data["parts"][0]["data"]["ratio"] == "nan"  # strict JSON: no NaN literal

    md = md_path.read_text()
    assert md.startswith("# ukd gpu_check: FAIL\n") and "NVIDIA H200" in md and "2.11.0+cu130" in md
    assert "| cifar-b64-fp32 / cuda | FAIL | grad:student_weight" in md
    assert "| reduce-overhead | fail (optional) |" in md and "Skipped: 3 s of the budget left" in md
    header = (
        "| shape | variant | median ms | min ms | GB/s | copy time / variant time | peak MB | × eager | × compile |"
    )
    table = md[md.index(header) :].splitlines()
    assert table[2].startswith("| imagenet B=256 | copy of 1200.0 MB | 0.300 |")
    assert table[4] == "| imagenet B=256 | triton | 0.500 | 0.490 | 2,400 | 0.60 | 12.0 | 6.00 | 3.00 |"
    assert "no kernel \\| for this" in table[5]  # a '|' in an error does not break the table
    assert all(line.count("|") - line.count("\\|") == 10 for line in table[:5])


def test_only_required_failures_fail_the_run(tmp_path: Path) -> None:
    report = _fabricated_report(optional_only=True)
    assert report.ok
    assert render_markdown(report).startswith("# ukd gpu_check: PASS\n")
    report.finished = None  # still running: never a pass
    assert not report.ok and render_markdown(report).startswith("# ukd gpu_check: INCOMPLETE\n")
    not_run = PartResult("p", "t", [Check("c", None, "not run: out of time")])
    assert not_run.status == "fail" and math.isfinite(not_run.elapsed_s)


# ------------------------------------------------------------------------------------------------ the step
def test_trainer_clone_takes_the_same_step() -> None:
    """The graph-replay check compares a replayed trainer with an eager clone: the clone must be exact."""
    from ukd.gpu_check.parts import Trainer, _max_param_err, step_inputs

    stages, cpu = ((4, 3, 3), (6, 2, 2)), torch.device("cpu")
    a = Trainer("reference", cpu, stages=stages, k=5)
    inp = step_inputs(0, cpu, stages=stages, batch=3, k=5)
    a.step(inp)
    b = a.clone()
    torch.manual_seed(1)
    loss_a = a.step(inp)
    torch.manual_seed(1)
    loss_b = b.step(inp)
    assert loss_a == loss_b and _max_param_err(a, b) == 0.0
    a.step(inp)  # b's parameters and momentum are its own
    assert _max_param_err(a, b) > 0
