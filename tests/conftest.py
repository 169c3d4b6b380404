import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub call would otherwise stall ~45 s without network

import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from gtcompress.cli import app  # noqa: E402
from gtcompress.config import RunConfig  # noqa: E402
from gtcompress.evaluate import predict_artefact  # noqa: E402
from gtcompress.records import BenchResult, ModelFile, Pareto, Point, Recommendation, Report, ReportHeader, ReportRow  # noqa: E402
from gtcompress.stages import run_stages  # noqa: E402

TEACHER, STUDENT = "test_resnet", "mobilenetv3_small_050"
PAIR = ("--teacher", TEACHER, "--student", STUDENT)  # the tiny pair every CLI test trains
COMPARE_STAGES = run_stages(RunConfig(compare=True))  # a default --compare run's: the born-again arm, no continued


def invoke(*args: str):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def distill(*args: str):
    """`gtcompress distill --teacher TEACHER --student STUDENT *args`, in-process."""
    return invoke("distill", *PAIR, *args)


# A top-2 logit margin this small may flip between two runs of the same model whose kernels sum in another order
# (another batch size, thread count or instruction set): the only images a top-1 comparison may excuse.
NEAR_TIE = 1e-4


def interrupted(monkeypatch, stage: str, *args: str):
    """`invoke(*args)` stopped by Ctrl-C right after `stage`'s first epoch is recorded (its checkpoint written, so
    a resume continues after it); the pipeline is whole again afterwards."""
    import gtcompress.pipeline as pipeline

    real = pipeline._append_history

    def interrupt(run, record):
        real(run, record)
        if record["stage"] == stage:
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_append_history", interrupt)
    try:
        return invoke(*args)
    finally:
        monkeypatch.setattr(pipeline, "_append_history", real)


def assert_recorded_accuracy_is_the_saved_models(record: dict, checkpoint: Path) -> None:
    """A recorded top-1 (and top-5) is the saved checkpoint's under `gtcompress eval` (PyTorch, fp32) to the image,
    but for the images it finds itself whose k-th and (k+1)-th logits are near-tied."""
    p = predict_artefact(checkpoint)
    ranked = np.argsort(-p.logits, axis=1, kind="stable")
    ordered = np.take_along_axis(p.logits, ranked, axis=1)
    for k in (1, 5):
        if f"top{k}" not in record:
            continue
        hits = int((ranked[:, :k] == p.labels[:, None]).any(1).sum())
        near_ties = int((ordered[:, k - 1] - ordered[:, k] < NEAR_TIE).sum())
        recorded = round(record[f"top{k}"] * len(p.labels) / 100)
        assert abs(recorded - hits) <= near_ties, f"{checkpoint.name} top-{k}: {recorded} vs {hits}, {near_ties} ties"


def shared(tmp_path_factory, name: str, make) -> Path:
    """`make(dir)` once for the whole session, every pytest-xdist worker included: the first to get the lock builds
    it, the others wait and reuse it."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root  # the workers' common directory
    with FileLock(root / f"{name}.lock"):
        done = root / name / ".complete"
        if not done.exists():
            shutil.rmtree(root / name, ignore_errors=True)
            (root / name).mkdir()
            make(root / name)
            done.touch()
    return root / name


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Path:
    """One small `distill --compare` run on digits, shared by every test that reads a run directory."""

    def make(d: Path) -> None:
        options = ("--epochs", 2, "--compare", "--set", "data.train_fraction=0.5", "--set", "teacher.train.lr=0.1")
        result = distill(*options, "--out", d / "run")
        assert result.exit_code == 0, result.output

    return shared(tmp_path_factory, "pipeline", make) / "run"


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# Student int8 agreement floor for the session's barely trained student (see tests/test_export.py).
INT8_TOLERANCE = "int8.min_agreement=50"
BENCH_ITERS, BENCH_BATCHES, BENCH_THREADS = 6, (1, 4), (1, 2)


@pytest.fixture(scope="session")
def workflow_run(pipeline_run, tmp_path_factory) -> Path:
    """The pipeline run taken through `gtcompress run --skip-distill`: exports, bench.json and the report."""
    return shared(tmp_path_factory, "workflow", lambda d: _workflow(copy_run(pipeline_run, d / "run"))) / "run"


def _workflow(run: Path) -> None:
    result = invoke(
        "run",
        "--skip-distill",
        "--out",
        run,
        "--export-precision",
        "fp32,int8",
        "--tolerance",
        INT8_TOLERANCE,
        "--batch-sizes",
        ",".join(map(str, BENCH_BATCHES)),
        "--iters",
        BENCH_ITERS,
        "--threads",
        ",".join(map(str, BENCH_THREADS)),
    )
    assert result.exit_code == 0, result.output


# A report of many rows, as a run of several students and long architecture names gives: 4 models x 3 precisions,
# each timed on 2 backends at 3 thread counts and 3 batch sizes.
MANY_STAGES = {
    "standard_teacher": "Standard Teacher",
    "generous_teacher": "Generous Teacher",
    "student_mobilenetv4_hybrid_medium": "student <- GT (mobilenetv4_hybrid_medium)",
    "student_from_born_again_mobilenetv4_hybrid_medium": "student <- born-again (mobilenetv4_hybrid_medium)",
}
MANY_PRECISIONS, MANY_BACKENDS, MANY_THREADS, MANY_BATCHES = (
    ("fp32", "fp16", "int8"),
    ("onnxruntime", "openvino"),
    (1, 2, 4),
    (1, 8, 32),
)


def _many_p50(model: int, precision: int, backend: int, threads: int, batch: int) -> float:
    """Distinct for every artefact and setting; 2 threads fastest, so the fastest setting is not the first timed."""
    return (1 + model) * (1 - 0.2 * precision) * (1 + 0.1 * backend) * batch**0.8 * (1 + abs(threads - 2) / 10)


def _many_result(stage: str, precision: str, backend: str, threads: int, batch: int, p50: float) -> BenchResult:
    return BenchResult(
        stage=stage,
        arch=stage,
        backend=backend,
        device="cpu",
        precision=precision,
        batch_size=batch,
        threads=threads,
        artefact=f"export/{stage}.{precision}.onnx",
        bytes=10**7,
        **{f"{k}_ms": p50 for k in ("min", "mean", "p50", "p90", "p95", "p99", "max")},
        std_ms=0.01,
        throughput=batch * 1000 / p50,
        iters=3,
        samples_ms=[p50 * 0.9, p50, p50 * 1.2],
    )


def many_rows_report() -> Report:
    bench = [
        _many_result(stage, precision, backend, t, b, _many_p50(m, q, k, t, b))
        for m, stage in enumerate(MANY_STAGES)
        for q, precision in enumerate(MANY_PRECISIONS)
        for k, backend in enumerate(MANY_BACKENDS)
        for t in MANY_THREADS
        for b in MANY_BATCHES
    ]
    rows = [
        ReportRow(
            name=title + ("" if precision == "fp32" else f" {precision}"),
            stage=stage,
            role="student" if stage.startswith("student") else "teacher",
            arch=stage,
            precision=precision,
            file=f"export/{stage}.{precision}.onnx",
            bytes=10**7,
            top1=90.0 - m - q,
            **dict.fromkeys(("delta_vs_st_student", "delta_vs_continued_student", "delta_vs_born_again_student"), 0.5),
            params=10**7,
            macs=10**9,
            p50_ms={backend: _many_p50(m, q, k, 2, 1) for k, backend in enumerate(MANY_BACKENDS)},
            setting=dict.fromkeys(MANY_BACKENDS, "2 threads"),
            speedup=1.5,
            size_ratio=2.0,
        )
        for m, (stage, title) in enumerate(MANY_STAGES.items())
        for q, precision in enumerate(MANY_PRECISIONS)
    ]
    points = [
        Point(**r.model_dump(include=set(ModelFile.model_fields)), role=r.role, p50_ms=r.p50_ms["onnxruntime"])
        for r in rows
    ]
    return Report(
        header=ReportHeader(
            run="many-rows",
            command="gtcompress distill --recipe recipes/imagenet.yaml --teacher resnet50 --student "
            "mobilenetv4_hybrid_medium,efficientnet_b0 --compare --out runs/imagenet-many-students-many-precisions",
            data="imagenet",
            method="kd from the Generous Teacher (beta 0.5, k 2.0, init standard)",
            teacher="resnet50",
            student="mobilenetv4_hybrid_medium, efficientnet_b0",
            machine="Intel(R) Xeon(R) Platinum 8480+ (avx512_vnni, amx_int8), 16 cores",
            trained_on="cuda x8",
            generated="2025-01-01 00:00:00 +0000",
        ),
        batch_size=1,
        primary_backend="onnxruntime",
        backends=list(MANY_BACKENDS),
        teacher="standard_teacher",
        titles=MANY_STAGES,
        rows=rows,
        bench=bench,
        pareto=Pareto(backend="onnxruntime", batch_size=1, budget_ms=3.0, points=points, front=[points[0].name]),
        recommendation=Recommendation(reason="the most accurate within the budget", pick=points[0]),
    )


def many_rows_history() -> list[dict]:
    """Three epochs of each of the many-row report's stages."""
    return [
        {"stage": stage, "epoch": e, "top1": 50.0 + 10 * e - m, "train_loss": 2.0 / (e + 1 + m)}
        for m, stage in enumerate(MANY_STAGES)
        for e in range(3)
    ]


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_wds_digits(root, per_split=(("train", 240, 2), ("validation", 60, 2)), drop_label_of=None):
    """digits as webdataset shards (`<key>.png` + `<key>.cls`) and timm's `_info.json`, in `root`.

    Each split is (name, images, shards): shards a count (equal shards) or a tuple of shard lengths."""
    import tarfile

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    splits, start = {}, 0
    for split, n, shards in per_split:
        sizes = (
            shards if isinstance(shards, tuple) else [n * (s + 1) // shards - n * s // shards for s in range(shards)]
        )
        assert sum(sizes) == n, (sizes, n)
        files, lengths, offsets = [], [], np.cumsum([0, *sizes])
        for s in range(len(sizes)):
            name, idx = f"{split}-{s:04d}.tar", range(start + offsets[s], start + offsets[s + 1])
            with tarfile.open(root / name, "w") as tar:
                for i in idx:
                    members = {"png": png_bytes(np.stack([images[i]] * 3, -1)), "cls": str(digits.target[i]).encode()}
                    for ext, data in members.items():
                        if (split, i, ext) == (drop_label_of, idx[0], "cls"):
                            continue
                        info = tarfile.TarInfo(f"{i:06d}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
            files.append(name)
            lengths.append(len(idx))
        splits[split] = {"name": split, "filenames": files, "shard_lengths": lengths, "num_samples": n}
        start += n
    (root / "_info.json").write_text(json.dumps({"name": "digits", "num_classes": 10, "splits": splits}))
    return root
