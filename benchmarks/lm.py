"""Language-model figures: training speed, the KD loss in a GPT step, top-k file size, peak memory.

    python benchmarks/lm.py [SECTION ...] [--quick] [--repeats 3] [--steps 200] [--workdir DIR]

Sections (default: all four, in this order):

  throughput  tokens/s of train-labels, offline distill (top-32 float16 logits file, uniform
              tail) and online distill (the teacher runs on each batch; KD backend auto, i.e.
              fused) for the LM example's student: gpt n_layer=2 n_head=2 n_embd=48 on complete
              Shakespeare (BPE vocab 1024, block 64, test_fraction 0.05), teacher gpt n_layer=3
              n_head=4 n_embd=96, batch 32, τ = 1, α = 1, one thread. The three arms alternate
              within each repeat (same seed, so the same batches); the time is the loop's, from
              its first optimizer step to its last (benchmarks/_timing.py): start-up, the
              first step (which compiles the fused loss) and the final evaluation are outside it.
              Then the per-batch pieces the arms differ in, timed alone: the loss forward +
              backward (cross-entropy, top-k KD with either tail, dense fused KD), the stored-row
              lookup and the teacher's forward.
  kd-loss     fused vs eager `kd_loss` inside a real GPT training step (the student above at
              V = 2,048 and 16,384, batch 16×64 rows, random teacher logits 3·N(0, 1), τ = 1):
              median time of the loss alone (forward + backward of kd_loss on the step's
              logits) and of the whole step (model forward, loss, backward, AdamW), backends
              alternating within each repeat, after warm-up calls (the fused backend compiles
              on its first call; that call is reported apart and not in the medians). Peak
              memory of the step: a fresh subprocess per (backend, V) runs two warm-up steps,
              resets its peak RSS (/proc/self/clear_refs), then runs three steps: peak RSS minus
              RSS before them, with glibc set to give freed large blocks back to the OS
              (MALLOC_MMAP_THRESHOLD_), so the RSS between steps is the memory in use.
  file-size   bytes per stored token position of top-K logit files (K = 8, 32, 128, float16),
              dumped from a small teacher on tinyshakespeare: file size / (windows × T), beside
              the goal 6·K + 8, the raw column bytes (values 2·K, ids 4·K, lse 4, index 8/T)
              and what each column takes in the file.
  memory      peak RSS of a fresh subprocess running evaluation (kdcli.train.loop.evaluate of the
              student over the whole train pool), dump-logits (top-32, float16) and offline
              distill (a few steps and its final evaluation with fidelity), at two corpus sizes
              (tinyshakespeare 1.1 MB and complete Shakespeare 5 MB by default): MB at each and
              the ratio, beside the ratio of train tokens. Evaluation runs again with
              MALLOC_MMAP_THRESHOLD_ set (--mmap-threshold), which separates what kdcli holds
              from what glibc's heap keeps. When this section is selected, every top-32 dump
              (the throughput section's too) runs in such a subprocess, so no corpus is dumped
              twice.

Teachers and logit files are made once per run in --workdir (default: a temporary folder),
so the sections share them. --quick is a smoke run of about a minute: two 250,000-character
slices of tinyshakespeare as the corpora, tiny step counts, one vocabulary in kd-loss.
Nothing is asserted about the figures.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS", "TORCHINDUCTOR_COMPILE_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread everywhere, the tokenizer and compiler included

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _timing import StepTimer, median  # noqa: E402  benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
DATA = str(HERE.parent.parent / "shared" / "data" / "text")  # as examples/lm_kappa_sweep.sh
SECTIONS = ("throughput", "kd-loss", "file-size", "memory")
TEACHER = {"n_layer": 3, "n_head": 4, "n_embd": 96}
STUDENT = {"n_layer": 2, "n_head": 2, "n_embd": 48}
LR = 3e-3
# glibc allocations from this size up are mmapped and unmapped on free: RSS then follows live memory
STEP_MMAP_THRESHOLD = 1 << 16
MEMORY_TOPK = 32  # the memory section's dumps, and the throughput section's offline file


def mb(n_bytes: float) -> float:
    return n_bytes / 2**20


# ---- memory of this process (Linux) ---------------------------------------------------------

def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    return 1024 * kb if kb is not None else 0


def peak_rss_bytes() -> int:
    """Peak RSS since start or since the last reset_peak_rss (VmHWM); ru_maxrss if unreadable."""
    kb = _status_kb("VmHWM")
    return 1024 * (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---- shared artifacts ------------------------------------------------------------------------

class Workspace:
    """Teachers (one per corpus) and their top-k logit files, made on first use."""

    def __init__(self, root: Path, args, measure_dumps: bool = False):
        self.root, self.args = root, args
        self.dumped: dict[tuple[str, int], tuple[str, dict]] = {}
        # top-32 dumps run in a fresh process that reports its peak RSS (the memory section's
        # figure), so that no corpus is dumped twice
        self.measure_dumps = measure_dumps
        self.dump_memory: dict[str, dict] = {}

    def dataset_args(self, files: str) -> dict:
        a = self.args
        return {"files": files, "vocab": a.vocab, "block": a.block, "test_fraction": a.test_fraction}

    @staticmethod
    def slug(files: str) -> str:
        return "+".join(Path(f).stem for f in files.split(","))

    def teacher(self, files: str) -> str:
        from kdcli.config import TrainConfig
        from kdcli.stages import train

        out = self.root / f"teacher-{self.slug(files)}"
        if not (out / "run.json").is_file():
            note(f"training the teacher on {files} ({self.args.teacher_steps} steps)")
            started = time.perf_counter()
            train.run(TrainConfig(
                out=str(out), stage="train-teacher", dataset="text", dataset_args=self.dataset_args(files),
                data_dir=self.args.data_dir, model="gpt", model_args=TEACHER, steps=self.args.teacher_steps, epochs=None,
                batch_size=self.args.batch, lr=LR, threads=1, device="cpu", eval_every="0",
                checkpoint_every="0"))
            note(f"  done in {time.perf_counter() - started:.0f} s")
        return str(out)

    def logits(self, files: str, k: int) -> tuple[str, dict]:
        """A top-k float16 logits file of the teacher on `files`, and its rows per split."""
        from kdcli.config import DumpConfig
        from kdcli.stages import dump_logits

        if (files, k) not in self.dumped:
            teacher = self.teacher(files)
            out = self.root / f"logits-{self.slug(files)}-top{k}.parquet"
            measured = self.measure_dumps and k == MEMORY_TOPK
            note(f"dump-logits --topk {k} --dtype float16 of the teacher on {files}"
                 + (" (subprocess, peak RSS measured)" if measured else ""))
            started = time.perf_counter()
            if measured:
                self.dump_memory[files] = child({"kind": "dump-logits", "teacher": teacher, "logits": str(out)})
                rows = self.dump_memory[files]["rows"]
            else:
                rows = dump_logits.run(DumpConfig(teacher=teacher, out=str(out), topk=k, dtype="float16",
                                                  device="cpu", overwrite=True)).rows
            note(f"  done in {time.perf_counter() - started:.0f} s")
            self.dumped[(files, k)] = str(out), rows
        return self.dumped[(files, k)]


def note(text: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


# ---- 1. throughput --------------------------------------------------------------------------

def section_throughput(ws: Workspace, args) -> None:
    from kdcli.config import DistillConfig, TrainConfig
    from kdcli.stages import distill, train

    teacher = ws.teacher(args.files)
    logits, _ = ws.logits(args.files, MEMORY_TOPK)
    common = dict(model="gpt", model_args=STUDENT, steps=args.steps, epochs=None, batch_size=args.batch,
                  lr=LR, threads=1, device="cpu", eval_every="0", checkpoint_every="0")
    kd_args = dict(tau=1.0, alpha=1.0)
    arms = {
        "train-labels": lambda out, seed, timer: train.run(
            TrainConfig(out=out, teacher=teacher, seed=seed, **common), progress=timer),
        "distill offline": lambda out, seed, timer: distill.run(
            DistillConfig(out=out, logits=logits, seed=seed, topk_tail="uniform", **kd_args, **common), progress=timer),
        "distill online": lambda out, seed, timer: distill.run(
            DistillConfig(out=out, teacher=teacher, seed=seed, **kd_args, **common), progress=timer),
    }
    tokens_per_step = args.batch * args.block
    rates: dict[str, list[float]] = {name: [] for name in arms}
    backend = None
    for r in range(args.repeats):
        for name, run in arms.items():
            timer = StepTimer()
            note(f"repeat {r + 1}/{args.repeats}: {name}")
            result = run(str(ws.root / "throughput" / f"{name.replace(' ', '-')}-{r}"), r, timer)
            rates[name].append(timer.rate() * tokens_per_step)
            if name == "distill online":
                backend = result.run.get("kd", {}).get("backend")

    header("throughput: tokens/s of the training loop")
    print(f"student gpt {fmt(STUDENT)}, teacher gpt {fmt(TEACHER)}; {args.files}, BPE vocab {args.vocab}, "
          f"block {args.block}; batch {args.batch} ({tokens_per_step} tokens/step), {args.steps} steps, "
          f"1 thread, τ=1 α=1, {args.repeats} alternating repeats; offline: top-32 float16 file, uniform tail; "
          f"online KD backend: {backend}")
    for name, values in rates.items():
        print(f"{name:16}: {median(values):8.0f} tokens/s  {1e3 * tokens_per_step / median(values):6.1f} "
              f"ms/step  (median; runs: {', '.join(f'{v:.0f}' for v in values)})")
    lab = median(rates["train-labels"])
    for name, goal in (("distill offline", "  (goal ≤ 1.15)"), ("distill online", "")):
        paired = [a / b for a, b in zip(rates["train-labels"], rates[name])]
        print(f"time per token {name.split()[1]}/labels: {lab / median(rates[name]):.3f}{goal}  "
              f"(per repeat: {', '.join(f'{p:.3f}' for p in paired)})")
    parts = loss_parts(teacher, logits, args)
    print(f"where the difference goes, per step of {tokens_per_step} rows (median ms of {args.parts_repeats} "
          "alternating calls): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))


def loss_parts(teacher: str, logits: str, args) -> dict[str, float]:
    """Median ms of each arm's extra work on one batch: the loss forward+backward on the student's
    logits (cross-entropy; top-k KD from the file's rows; dense KD with the fused backend) and the
    lookup of stored rows and the teacher's forward."""
    import torch.nn.functional as F

    from kdcli.io.logits import read_logits
    from kdcli.losses import kd_loss
    from kdcli.losses.topk import topk_kd_loss
    from kdcli.teacher import resolve_teacher

    stored = read_logits(logits, "train")
    model = resolve_teacher(teacher, None).load_model(torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, len(stored.index), (args.batch,), generator=g)
    x = torch.randint(0, stored.num_classes, (args.batch, args.block), generator=g)
    y = torch.randint(0, stored.num_classes, (args.batch * args.block,), generator=g)
    s = torch.randn(args.batch * args.block, stored.num_classes, generator=g).requires_grad_()
    with torch.no_grad():
        t = model(x).float().reshape(len(s), -1)

    def backward(loss):
        s.grad = None
        loss.backward()

    @torch.no_grad()
    def teacher_forward():
        model(x)

    calls = {
        "CE (labels)": lambda: backward(F.cross_entropy(s, y)),
        "top-32 rows lookup": lambda: stored.topk(pos).reshape_rows(),
        "top-32 KD uniform": lambda: backward(topk_kd_loss(s, stored.topk(pos).reshape_rows(), tau=1.0)),
        "top-32 KD bucket": lambda: backward(topk_kd_loss(s, stored.topk(pos).reshape_rows(), tau=1.0,
                                                          tail="bucket")),
        "teacher forward": teacher_forward,
        "dense KD fused": lambda: backward(kd_loss(s, t, tau=1.0, backend="fused")),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    for fn in calls.values():
        fn()  # warm-up (the fused backend is compiled by now, or compiles here)
    for _ in range(args.parts_repeats):
        for k, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: 1e3 * median(v) for k, v in times.items()}


def fmt(d: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items())


# ---- 2. fused vs eager in a GPT step --------------------------------------------------------

def gpt_step_setup(vocab: int, args):
    from kdcli.models import build_model, resolve_model_args

    torch.manual_seed(0)
    model = build_model("gpt", **resolve_model_args("gpt", vocab, (args.loss_t,), dict(STUDENT)))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (args.loss_b, args.loss_t), generator=g)
    t = 3 * torch.randn(args.loss_b, args.loss_t, vocab, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    return model, x, t, opt


def kd(s, t, backend):
    from kdcli.losses import kd_loss

    return kd_loss(s, t, tau=1.0, alpha=1.0, backend=backend)


def train_step(model, x, t, opt, backend) -> float:
    start = time.perf_counter()
    loss = kd(model(x), t, backend)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def loss_step(s, t, backend) -> float:
    start = time.perf_counter()
    s.grad = None
    kd(s, t, backend).backward()
    return time.perf_counter() - start


def section_kd_loss(ws: Workspace, args) -> None:
    backends = ("eager", "fused")
    rows = []
    for vocab in args.vocabs:
        note(f"kd-loss timing at V = {vocab}")
        model, x, t, opt = gpt_step_setup(vocab, args)
        with torch.no_grad():
            s = model(x).detach()
        s.requires_grad_()
        first = {b: loss_step(s, t, b) for b in backends}  # the fused backend compiles here
        for b in backends:
            for _ in range(2):
                train_step(model, x, t, opt, b)
                loss_step(s, t, b)
        loss_t = {b: [] for b in backends}
        step_t = {b: [] for b in backends}
        for _ in range(args.loss_repeats):
            for b in backends:
                loss_t[b].append(loss_step(s, t, b))
                step_t[b].append(train_step(model, x, t, opt, b))
        del model, x, t, opt, s
        gc.collect()
        mem = {}
        for b in backends:
            note(f"kd-loss peak memory at V = {vocab}, {b} (subprocess)")
            mem[b] = child({"kind": "step", "backend": b, "vocab": vocab, "b": args.loss_b, "t": args.loss_t},
                           env={"MALLOC_MMAP_THRESHOLD_": str(STEP_MMAP_THRESHOLD)})
        for b in backends:
            rows.append((vocab, b, 1e3 * median(loss_t[b]), 1e3 * median(step_t[b]), 1e3 * first[b], mem[b]))

    header("kd-loss: fused vs eager KD loss in a GPT training step")
    n = args.loss_b * args.loss_t
    print(f"student gpt {fmt(STUDENT)}, batch {args.loss_b}×{args.loss_t} = {n} rows, random teacher "
          f"logits, τ=1 α=1, float32, 1 thread; median of {args.loss_repeats} alternating repeats after "
          "warm-up. 'first' = the first loss call (the fused backend compiles there: not in the medians). "
          "Step peak = peak RSS of 3 steps minus RSS before them, after 2 warm-up steps, in a fresh subprocess "
          f"per row with MALLOC_MMAP_THRESHOLD_={STEP_MMAP_THRESHOLD} (so memory freed between steps goes back "
          "to the OS instead of hiding the next step's allocations)")
    print(f"{'V':>6} {'backend':>7} {'loss fwd+bwd ms':>16} {'step ms':>8} {'loss share':>10} "
          f"{'first ms':>9} {'step peak MB':>12} {'logits MB':>9}")
    for vocab, b, loss_ms, step_ms, first_ms, m in rows:
        logits_mb = mb(4 * n * vocab)
        peak = f"{mb(m['peak'] - m['base']):12.1f}" + ("" if m["reset"] else "*")
        print(f"{vocab:>6} {b:>7} {loss_ms:16.2f} {step_ms:8.2f} {loss_ms / step_ms:9.0%} {first_ms:9.0f} "
              f"{peak} {logits_mb:9.1f}")
    by = {(v, b): (lm, sm, m) for v, b, lm, sm, _, m in rows}
    for vocab in args.vocabs:
        (le, se, me), (lf, sf, mf) = by[(vocab, "eager")], by[(vocab, "fused")]
        pe, pf = mb(me["peak"] - me["base"]), mb(mf["peak"] - mf["base"])
        print(f"V={vocab}: eager/fused loss {le / lf:.2f}×, step {se / sf:.2f}×, step peak memory "
              + (f"{pe / pf:.2f}×" if pf >= 1 else f"{pe:.0f} vs {pf:.1f} MB"))
    if not all(m["reset"] for *_, m in rows):
        print("* the peak RSS could not be reset after warm-up here: it includes the warm-up (and compile)")


def child_step(spec: dict) -> dict:
    """Peak RSS of GPT training steps with one KD backend, after warm-up (in a fresh process)."""
    args = argparse.Namespace(loss_b=spec["b"], loss_t=spec["t"])
    model, x, t, opt = gpt_step_setup(spec["vocab"], args)
    for _ in range(2):
        train_step(model, x, t, opt, spec["backend"])
    gc.collect()
    reset = reset_peak_rss()
    base = rss_bytes()
    for _ in range(3):
        train_step(model, x, t, opt, spec["backend"])
    return {"base": base, "peak": peak_rss_bytes(), "reset": reset}


# ---- 3. bytes per token of top-k files -----------------------------------------------------

def section_file_size(ws: Workspace, args) -> None:
    results = []
    for k in args.ks:
        path, rows = ws.logits(args.small_files, k)
        positions = (rows.get("train", 0) + rows.get("test", 0) + rows.get("ood", 0)) * args.block
        results.append((k, os.path.getsize(path), positions, column_bytes(path)))

    header("file-size: bytes per token position of top-K logit files (float16)")
    print(f"teacher gpt {fmt(TEACHER)} ({args.teacher_steps} steps) on {args.small_files}, BPE vocab "
          f"{args.vocab}, block T={args.block}; positions = windows (train + test) × T. raw = the columns' "
          "bytes before Parquet: values 2·K + ids 4·K + lse 4 + index 8/T")
    print(f"{'K':>4} {'file MB':>8} {'positions':>10} {'bytes/token':>11} {'goal 6K+8':>9} {'vs goal':>7} "
          f"{'raw':>7}   in the file per token: values, ids, lse, index+split+footer")
    for k, size, positions, cols in results:
        goal, raw = 6 * k + 8, 6 * k + 4 + 8 / args.block
        rest = size - cols["topk_logits"] - cols["topk_ids"] - cols["lse"]
        per = [cols["topk_logits"], cols["topk_ids"], cols["lse"], rest]
        print(f"{k:>4} {mb(size):8.2f} {positions:>10,} {size / positions:11.2f} {goal:9d} "
              f"{size / positions / goal:7.3f} {raw:7.2f}   " + ", ".join(f"{b / positions:.2f}" for b in per))
    print("(Parquet as kdcli writes it: dictionary encoding where it pays, Snappy; float16 values and "
          "ids shrink most when the teacher's logits take few distinct values)")


def column_bytes(path: str) -> dict[str, int]:
    """Compressed bytes of each top-level column of a Parquet file, over its row groups."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    out: dict[str, int] = {}
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            col = meta.row_group(g).column(c)
            name = col.path_in_schema.split(".")[0]
            out[name] = out.get(name, 0) + col.total_compressed_size
    return out


# ---- 4. peak memory at two corpus sizes ----------------------------------------------------

def section_memory(ws: Workspace, args) -> None:
    corpora = (args.small_files, args.files if args.large_files is None else args.large_files)
    # (kind, allocator): glibc's defaults; evaluation again with a fixed mmap threshold, under which
    # glibc gives freed large blocks back to the OS
    runs = [("evaluate", ""), ("distill", "")]
    if args.mmap_threshold:
        runs.append(("evaluate", str(args.mmap_threshold)))
    results = {}
    for files in corpora:
        teacher = ws.teacher(files)
        if files not in ws.dump_memory:  # dumped in-process before this section: dump again, measured
            ws.dumped.pop((files, MEMORY_TOPK), None)
            ws.measure_dumps = True
        logits, _ = ws.logits(files, MEMORY_TOPK)
        results[(files, "dump-logits", "")] = ws.dump_memory[files]
        for kind, threshold in runs:
            note(f"memory: {kind} on {files}{f' (MALLOC_MMAP_THRESHOLD_={threshold})' if threshold else ''}")
            env = {"MALLOC_MMAP_THRESHOLD_": threshold} if threshold else {}
            results[(files, kind, threshold)] = child(
                {"kind": kind, "teacher": teacher, "logits": logits, "steps": args.memory_steps,
                 "batch": args.batch, "out": str(ws.root / "memory" / f"distill-{ws.slug(files)}")}, env=env)
    runs.insert(1, ("dump-logits", ""))
    small, large = corpora
    tokens = {f: results[(f, "evaluate", "")]["tokens"] for f in corpora}

    header("memory: peak RSS of a fresh process at two corpus sizes")
    print(f"small = {small}, large = {large}: train pools of {tokens[small]:,} and {tokens[large]:,} tokens "
          f"(ratio {tokens[large] / tokens[small]:.2f}); BPE vocab {args.vocab}, block {args.block}, 1 thread. "
          f"evaluate: kdcli.train.loop.evaluate of the student gpt {fmt(STUDENT)} over the whole train pool "
          f"(bits per byte included); dump-logits: the teacher gpt {fmt(TEACHER)}, --topk 32 --dtype float16; "
          f"distill: offline from that file, {args.memory_steps} steps, then the final evaluation of the test "
          "split with fidelity to the teacher. MB = peak RSS (in brackets: above the RSS after imports, "
          f"{mb(results[(small, 'evaluate', '')]['start']):.0f} MB). glibc: default malloc settings; "
          "mmap≥N: MALLOC_MMAP_THRESHOLD_=N")
    print(f"{'':30} {'small MB':>12} {'large MB':>12} {'ratio':>12}")

    def line(label: str, a: dict, b: dict, key: str = "peak") -> None:
        pa, pb = mb(a[key]), mb(b[key])
        ea, eb = pa - mb(a["start"]), pb - mb(b["start"])
        print(f"{label:30} {pa:5.0f} ({ea:4.0f}) {pb:5.0f} ({eb:4.0f}) {pb / pa:5.2f} ({eb / max(ea, 1e-9):4.2f})")

    for kind, threshold in runs:
        a, b = results[(small, kind, threshold)], results[(large, kind, threshold)]
        line(f"{kind} {f'mmap≥{threshold}' if threshold else 'glibc'}", a, b)
        if kind == "distill":
            line("  before the final evaluation", a, b, "train_peak")
    d = results[(large, "dump-logits", "")]
    print(f"top-32 files: {mb(results[(small, 'dump-logits', '')]['file']):.0f} MB and {mb(d['file']):.0f} MB")


def child_memory(spec: dict) -> dict:
    start = rss_bytes()
    out: dict = {"start": start}
    if spec["kind"] == "evaluate":
        from kdcli.data import dataset_from_description
        from kdcli.models import build_model, resolve_model_args
        from kdcli.teacher import resolve_teacher
        from kdcli.train.loop import evaluate

        dataset = dataset_from_description(resolve_teacher(spec["teacher"], None).dataset, None, "teacher")
        torch.manual_seed(0)
        model = build_model("gpt", **resolve_model_args("gpt", dataset.num_classes, dataset.input_shape,
                                                        dict(STUDENT)))
        split = dataset.train()
        metrics = evaluate(model, split, dataset.task, dataset.model_input, 2048, torch.device("cpu"),
                           token_bytes=dataset.token_bytes)
        out.update(tokens=int(split.y.numel()), metrics=metrics)
    elif spec["kind"] == "dump-logits":
        from kdcli.config import DumpConfig
        from kdcli.stages import dump_logits

        result = dump_logits.run(DumpConfig(teacher=spec["teacher"], out=spec["logits"], topk=MEMORY_TOPK,
                                            dtype="float16", device="cpu", overwrite=True))
        out.update(file=os.path.getsize(spec["logits"]), rows=result.rows)
    else:
        from kdcli.config import DistillConfig
        from kdcli.stages import distill
        from kdcli.train.loop import Evaluator

        evaluate = Evaluator.__call__

        def peak_first(self, model):  # the peak of loading and training, before the final evaluation
            out.setdefault("train_peak", peak_rss_bytes())
            return evaluate(self, model)

        Evaluator.__call__ = peak_first
        distill.run(DistillConfig(out=spec["out"], logits=spec["logits"], model="gpt", model_args=STUDENT,
                                  steps=spec["steps"], epochs=None, batch_size=spec["batch"], lr=LR, tau=1.0,
                                  alpha=1.0, threads=1, device="cpu", eval_every="0", checkpoint_every="0",
                                  overwrite=True))
    out["peak"] = peak_rss_bytes()
    return out


# ---- subprocesses --------------------------------------------------------------------------

def child(spec: dict, env: dict | None = None) -> dict:
    """Run one measurement in a fresh Python process; its result comes back as JSON."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec['kind']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_child(spec_json: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(spec_json)
    result = child_step(spec) if spec["kind"] == "step" else child_memory(spec)
    print(json.dumps(result, default=float))


def quick_settings(args, root: Path) -> None:
    """A smoke run: two 250,000-character slices of tinyshakespeare as the corpora (small: the
    first, large: both), tiny step counts; tokenizer caches go to the work dir."""
    data = root / "quick-data"
    data.mkdir(exist_ok=True)
    text = (Path(args.data_dir) / "tinyshakespeare.txt").read_text()
    for i, name in enumerate(("quick-a.txt", "quick-b.txt")):
        (data / name).write_text(text[i * 250_000:(i + 1) * 250_000])
    os.environ["KDCLI_CACHE_DIR"] = str(root / "cache")
    args.data_dir, args.files, args.small_files = str(data), "quick-a.txt", "quick-a.txt"
    args.large_files = "quick-a.txt,quick-b.txt"
    args.teacher_steps, args.steps, args.repeats, args.parts_repeats = 10, 12, 2, 3
    args.vocabs, args.loss_repeats, args.ks, args.memory_steps, args.mmap_threshold = [2048], 3, [8, 32], 3, 0


# ---- main ----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", metavar="SECTION",
                        help=f"what to measure: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument("--workdir", default=None, help="keep teachers and logit files here (default: a temp dir)")
    parser.add_argument("--data-dir", default=DATA, help="folder of the text files (default: %(default)s)")
    parser.add_argument("--files", default="shakespeare_complete_modern.txt",
                        help="corpus of the throughput section and the large corpus of the memory section")
    parser.add_argument("--small-files", default="tinyshakespeare.txt",
                        help="corpus of the file-size section and the small one of the memory section")
    parser.add_argument("--large-files", default=None, help="the memory section's large corpus (default --files)")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--test-fraction", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--teacher-steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=200, help="student steps per throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="throughput repeats (arms alternate)")
    parser.add_argument("--parts-repeats", type=int, default=20, help="repeats of the per-part loss timings")
    parser.add_argument("--vocabs", type=int, nargs="+", default=[2048, 16384], help="kd-loss vocabularies")
    parser.add_argument("--loss-b", type=int, default=16, help="kd-loss batch (windows)")
    parser.add_argument("--loss-t", type=int, default=64, help="kd-loss window length")
    parser.add_argument("--loss-repeats", type=int, default=10)
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 32, 128], help="file-size top-K values")
    parser.add_argument("--memory-steps", type=int, default=20, help="offline distill steps in the memory section")
    parser.add_argument("--mmap-threshold", type=int, default=STEP_MMAP_THRESHOLD,
                        help="memory section: also run evaluate with MALLOC_MMAP_THRESHOLD_ set "
                             "to this, so glibc gives freed large blocks back to the OS (0: not)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        run_child(args.child)
        return
    if unknown := [s for s in args.sections if s not in SECTIONS]:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(1)
    sections = args.sections or list(SECTIONS)
    with tempfile.TemporaryDirectory(prefix="kdcli-lm-bench-") as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        if args.quick:
            quick_settings(args, root)
        print(f"kdcli LM benchmarks{' (--quick)' if args.quick else ''}: torch {torch.__version__}, "
              f"{os.cpu_count()} cores, 1 thread; data {args.data_dir}", flush=True)
        ws = Workspace(root, args, measure_dumps="memory" in sections)
        for name in SECTIONS:
            if name in sections:
                started = time.perf_counter()
                globals()[f"section_{name.replace('-', '_')}"](ws, args)
                print(f"({name}: {time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
