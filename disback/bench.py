"""Measured costs (``make bench``): what DisBack's stages and one-step sampling cost, as ratios timed in one process.

Absolute times differ between machines, so every measured figure is a ratio of two timings taken side by side in
this process (the machine is recorded beside them). Timings are the process's CPU time (``time.process_time``, one
thread): on a shared machine, wall time swung by 2x between identical runs while CPU time stayed within ~10%. The
configs are the profile's own (a notebook's ``parameters`` cell overlaid by ``params/<profile>/NN_name__ring2d.yaml``)
on the ring2d setting. Run as
``python -m disback.bench --profile cpu --results results``; writes ``results/<profile>/bench.json`` and
``results/<profile>/tables/bench.csv|md``. ``bench_lines`` renders the section of REPORT.md.
"""
from __future__ import annotations

import argparse
import ast
import csv
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from .checkpoint import fingerprint, read_json, write_json
from .config import DegradeConfig, DistillConfig, TeacherConfig
from .degrade import record_degradation
from .diffusion import edm_sampler, heun_nfe
from .distill import NFE_FAKE_STEP, backtrack, distill
from .generator import frozen_copy, make_generator
from .settings import load_setting
from .teachers import load_teacher, train_teacher

SETTING = "ring2d"
TEST_TIME = "test_time.json"  # in the results root: written by `make test` (any profile), quoted by the bench
PAPER_TEACHERS = {"FFHQ-64 / AFHQv2-64 (EDM Heun, 40 steps)": 79, "ImageNet-64 (EDM stochastic, 256 steps)": 511}
SCALE = {  # per profile: runs of each stage-2 arm, switch-timing rounds, samples per sampling call, teacher steps cap
    "smoke": {"repeats": 2, "switch_rounds": 3, "num_samples": 1000, "teacher_iters": 100},
    "cpu": {"repeats": 2, "switch_rounds": 20, "num_samples": 20000, "teacher_iters": 300},
}


def notebook_params(root: Path, profile: str, notebook: str) -> dict:
    """A notebook's parameters at ``profile``: its ``parameters`` cell's literals overlaid by the profile's YAML."""
    nb = json.loads((root / "notebooks" / f"{notebook}.ipynb").read_text())
    cell = next((c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise ValueError(f"notebooks/{notebook}.ipynb: no cell tagged 'parameters'")
    params = {}
    for node in ast.parse("".join(cell["source"])).body:
        target = getattr(node, "target", None) or (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and getattr(node, "value", None) is not None:
            try:
                params[target.id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    pinned = root / "params" / profile / f"{notebook}__{SETTING}.yaml"
    if pinned.is_file():
        params.update(yaml.safe_load(pinned.read_text()) or {})
    return params


def machine() -> dict:
    """Where the timings were taken: platform, CPU count, load, torch and thread count."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def _timed(fn, repeats: int = 1) -> tuple[float, object]:
    """Median CPU time of ``repeats`` calls of ``fn`` and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.process_time()
        out = fn()
        times.append(time.process_time() - start)
    return statistics.median(times), out


def _teacher(runs: Path, profile: str, config: TeacherConfig, train: torch.Tensor, cap: int):
    """The profile's teacher from notebook 01 when it exists, else one of its architecture trained briefly here."""
    folder = runs / profile / SETTING / "teacher"
    if (folder / "teacher.json").is_file():
        return load_teacher(folder), f"`{folder}` (notebook 01)"
    config = config.replace(iters=min(config.iters, cap))
    return train_teacher(train, config=config, progress=False), (
        f"trained here for {config.iters} steps (notebook 01's architecture; timing does not need a good teacher)")


def stage2_config(params: dict, num_nodes: int) -> DistillConfig:
    """Notebook 03's stage-2 config; DisBack's share of updates on intermediate nodes is the first share its tuning
    grid tries (10% where it names none: the released code's share)."""
    from .analysis import iters_per_node_for_share

    fields = params.get("distill_config", {})
    config = DistillConfig.from_dict({**fields, "method": params.get("method", "diff_instruct")})
    if "iters_per_node" not in fields:
        share = (params.get("disback_grid", {}).get("share") or [0.1])[0]
        config = config.replace(iters_per_node=iters_per_node_for_share(share, num_nodes, config.iters))
    return config


def stage_costs(teacher, degrade: DegradeConfig, config: DistillConfig, work: Path, scale: dict) -> dict:
    """Stage 2 per update, DisBack vs. the same loop on the teacher; one target switch; stage 1's share."""
    config = config.replace(eval_every=0, ckpt_every=0, ema=0.0, sigma_init=degrade.sigma_init)
    t1, path = _timed(lambda: record_degradation(teacher, degrade, work / "stage1", progress=False))
    runs = {"disback": lambda d: backtrack(teacher, path, config, d, progress=False),
            "teacher": lambda d: distill(teacher, config, d, progress=False)}
    arms = {"disback": [], "teacher": []}
    for r in range(scale["repeats"]):  # ABBA order: a linear drift in machine speed cancels in the totals
        for arm in (("disback", "teacher") if r % 2 == 0 else ("teacher", "disback")):
            t, out = _timed(lambda: runs[arm](work / f"{arm}{r}"))
            arms[arm].append(t)
            if arm == "disback":
                res = out
    per_update = {k: sum(v) / len(v) / config.iters for k, v in arms.items()}
    target = frozen_copy(teacher)

    def switch_all():
        for node in range(path.num_nodes, 0, -1):  # what the loop does at a switch: load the node, fingerprint it
            path.load_node(node, target)
            fingerprint(target)
    t_switch = _timed(switch_all, scale["switch_rounds"])[0] / path.num_nodes
    t2 = sum(arms["disback"]) / len(arms["disback"])
    nfe1 = degrade.iters * degrade.batch * NFE_FAKE_STEP
    nfe2 = res.log[-1]["nfe"]
    return {
        "stage2": {"iters": config.iters, "batch": config.batch, "method": config.method, "repeats": scale["repeats"],
                   "num_switches": len(res.schedule.switch_steps), "s_per_update_disback": per_update["disback"],
                   "s_per_update_teacher": per_update["teacher"],
                   "ratio_per_update": per_update["disback"] / per_update["teacher"],
                   "s_per_switch": t_switch, "switch_in_updates": t_switch / per_update["teacher"]},
        "stage1": {"iters": degrade.iters, "batch": degrade.batch, "num_nodes": degrade.num_nodes, "seconds": t1,
                   "stage2_seconds": t2, "time_share": t1 / (t1 + t2), "nfe": nfe1, "stage2_nfe": nfe2,
                   "nfe_share": nfe1 / (nfe1 + nfe2)},
    }


@torch.no_grad()
def sampling_costs(teacher, sigma_init: float, steps: int, sigma_max: float, scale: dict) -> dict:
    """Samples per second of the one-step generator vs. the teacher's Heun sampler, on the same network."""
    noise = torch.randn((scale["num_samples"], *teacher.data_shape), generator=torch.Generator().manual_seed(0))
    generator = make_generator(teacher, sigma_init).eval()
    t_one = _timed(lambda: generator(noise), 5)[0]
    t_heun = _timed(lambda: edm_sampler(teacher, noise, num_steps=steps, sigma_max=sigma_max), 3)[0]
    return {"num_samples": scale["num_samples"], "heun_steps": steps, "heun_nfe": heun_nfe(steps),
            "onestep_samples_per_s": scale["num_samples"] / t_one, "heun_samples_per_s": scale["num_samples"] / t_heun,
            "throughput_ratio": t_heun / t_one, "nfe_ratio": heun_nfe(steps)}


PAPER_SAMPLING_SETTINGS = {"FFHQ-64 / AFHQv2-64 (EDM Heun, 40 steps)": "ffhq64",
                           "ImageNet-64 (EDM stochastic, 256 steps)": "imagenet64"}


def paper_sampling(results: Path) -> list[dict]:
    """One-step against the teacher's sampler on the paper's networks: the fp32 measurement of ``python -m disback
    throughput --sampling-batch`` in ``results/paper/throughput*.json`` where one exists (random weights: the speed
    does not depend on them), else pending."""
    measured = {}
    for f in sorted((Path(results) / "paper").glob("throughput*.json")):
        rec = read_json(f)
        for row in rec.get("sampling", []):
            if row.get("status") == "ok" and row["precision"] == "fp32" and rec.get("size") == "full":
                measured.setdefault(row["setting"], {**row, "device": rec["device"], "file": f"results/paper/{f.name}"})
    out = []
    for teacher, nfe in PAPER_TEACHERS.items():
        row = measured.get(PAPER_SAMPLING_SETTINGS[teacher])
        out.append({"teacher": teacher, "heun_nfe": nfe, "nfe_ratio": nfe, **(row or {
            "status": "pending: needs a GPU (`python -m disback throughput --random-weights --sampling-batch 16`)"})})
    return out


def papermill_runs(results: Path, profile: str) -> dict[str, dict]:
    """Papermill's metadata (duration, start and end time, parameters) of each executed notebook of ``profile``
    that has a duration, by name, in name order."""
    found = {}
    for nb in sorted((Path(results) / profile / "notebooks").glob("*.ipynb")):
        meta = json.loads(nb.read_text()).get("metadata", {}).get("papermill", {})
        if meta.get("duration") is not None:
            found[nb.stem] = meta
    return found


def wall_times(results: Path, profile: str) -> dict:
    """Each executed notebook's papermill duration and the last recorded ``make test`` wall time."""
    notebooks = {stem: meta["duration"] for stem, meta in papermill_runs(results, profile).items()}
    test_file, repro_file = results / TEST_TIME, results / profile / REPRODUCE_TIME
    test = read_json(test_file) if test_file.is_file() else {"missing": f"no {test_file.name}: run `make test`"}
    reproduce = read_json(repro_file)["runs"] if repro_file.is_file() else []
    return {"notebooks": notebooks, "make_test": test, "make_reproduce": reproduce}


def run(profile: str, results: Path, runs: Path, root: Path) -> dict:
    """Measure everything for ``profile`` and write ``bench.json`` and the table; returns the record."""
    if profile not in SCALE:
        raise ValueError(f"profile={profile!r}: must be one of {tuple(SCALE)}")
    scale, start = SCALE[profile], time.perf_counter()
    p1, p2, p3 = (notebook_params(root, profile, nb) for nb in
                  ("01_teacher_setup", "02_degradation_recording", "03_distribution_backtracking"))
    setting = load_setting(SETTING, num_train=p1.get("num_train", 4000), num_reference=10)
    teacher, source = _teacher(runs, profile, TeacherConfig.from_dict(p1.get("teacher_config", {})), setting.train,
                               scale["teacher_iters"])
    degrade = DegradeConfig.from_dict(p2.get("degrade_config", {}))
    config = stage2_config(p3, degrade.num_nodes)
    record = {"profile": profile, "setting": SETTING, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine(), "teacher": source}
    with tempfile.TemporaryDirectory(prefix="disback-bench-") as work:
        record.update(stage_costs(teacher, degrade, config, Path(work), scale))
    record["sampling"] = sampling_costs(teacher, degrade.sigma_init, p1.get("sampler_steps", 18),
                                        p1.get("sigma_max", 20.0), scale)
    record["paper_sampling"] = paper_sampling(results)
    record.update(wall_times(results, profile))
    record["bench_seconds"] = time.perf_counter() - start
    out = results / profile
    write_json(out / "bench.json", record)
    rows = table_rows(record)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    with open(out / "tables" / "bench.csv", "w", newline="") as f:
        csv.writer(f).writerows([("quantity", "measured", "how"), *rows])
    (out / "tables" / "bench.md").write_text("\n".join(_markdown(rows)) + "\n")
    return record


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def table_rows(r: dict) -> list[tuple[str, str, str]]:
    """(quantity, measured, how) for each figure of a bench record."""
    s2, s1, sm = r["stage2"], r["stage1"], r["sampling"]
    rows = [
        ("DisBack stage 2, time per update / the same loop on the teacher", f"{s2['ratio_per_update']:.2f}x",
         f"CPU time, {s2['repeats']} runs of {s2['iters']} updates per arm in ABBA order "
         f"({s2['num_switches']} target switches included); {s2['s_per_update_disback'] * 1e3:.2f} vs {s2['s_per_update_teacher'] * 1e3:.2f} ms"),
        ("one target switch / one stage-2 update", f"{s2['switch_in_updates']:.2f}x",
         f"load a node's safetensors into the target and fingerprint it: {s2['s_per_switch'] * 1e3:.2f} ms"),
        ("stage 1 / whole DisBack run, time", f"{s1['time_share']:.1%}",
         f"{s1['iters']} stage-1 steps, {s1['num_nodes']} nodes saved: {s1['seconds']:.1f} s; "
         f"stage 2: {s1['stage2_seconds']:.1f} s"),
        ("stage 1 / whole DisBack run, network evaluations", f"{s1['nfe_share']:.1%}",
         f"{s1['nfe']:,} of {s1['nfe'] + s1['stage2_nfe']:,} (per sample: 2 per fake-score step, 3 per generator "
         f"step)"),
        (f"one-step sampling throughput / teacher's Heun sampler (NFE {sm['heun_nfe']})",
         f"{sm['throughput_ratio']:.1f}x", f"NFE ratio {sm['nfe_ratio']}x; {sm['num_samples']:,} samples per call: "
         f"{sm['onestep_samples_per_s']:,.0f} vs {sm['heun_samples_per_s']:,.0f} samples/s"),
    ]
    for p in r["paper_sampling"]:
        if "throughput_ratio" in p:
            rows.append((f"one-step sampling throughput / the teacher's sampler, {p['teacher']}",
                         f"{p['throughput_ratio']:.0f}x", f"NFE ratio {p['nfe_ratio']}x; random-weight network of the "
                         f"teacher's architecture, fp32, batch {p['batch']}, {p['device']}: {p['onestep_samples_per_s']:,.0f} "
                         f"vs {p['teacher_samples_per_s']:.3g} samples/s (`{p['file']}`)"))
        else:
            rows.append((f"one-step / Heun sampling throughput, {p['teacher']}", p["status"],
                         f"NFE ratio {p['nfe_ratio']}x"))
    rows += [(f"notebook `{stem}` wall time", _minutes(d), "papermill metadata") for stem, d in r["notebooks"].items()]
    if r["notebooks"]:  # one single-threaded process each: their sum is the work, half of it the least wall time on 2
        total = sum(r["notebooks"].values())
        rows.append(("notebooks' wall times, summed", _minutes(total),
                     f"one single-threaded process each: about the work in core time (over it where a notebook "
                     f"waited for another's run or shared a core); on 2 cores no schedule of them ends before "
                     f"{_minutes(total / 2)}"))
    history = r.get("make_reproduce", [])
    # The latest first, then two before it, and the first one recorded (the time before any speed-up work) last.
    shown = [("" if i == 0 else f" (earlier run {i})", run) for i, run in enumerate(reversed(history[-3:]))]
    shown += [(" (first recorded run)", history[0])] if len(history) > 3 else []
    for which, run in shown:
        label = "`make reproduce` notebooks wall time" + which
        how = (f"{'from empty runs/' if run['from_empty_runs'] else 'reusing finished runs'}, -j{run['jobs']}, "
               f"{'passed' if run['passed'] else 'FAILED'}, commit {run.get('commit') or '?'}, {run['finished']}"
               + (f"; {run['note']}" if run.get("note") else ""))
        rows.append((label, _minutes(run["seconds"]), how))
    test = r["make_test"]
    rows.append(("`make test` wall time", _minutes(test["seconds"]) if "seconds" in test else "missing",
                 f"{'passed' if test.get('passed') else 'FAILED'}, finished {test.get('finished', '?')}"
                 if "seconds" in test else test["missing"]))
    return rows


def _markdown(rows) -> list[str]:
    return ["| quantity | measured | how |", "|---|---|---|"] + [f"| {q} | {m} | {h} |" for q, m, h in rows]


def bench_lines(results_dir: Path, profile: str, root: Path) -> list[str]:
    """The REPORT.md section "Measured costs (`make bench`)" read from ``results/<profile>/bench.json``."""
    f = Path(results_dir) / profile / "bench.json"
    lines = ["", "## Measured costs (`make bench`)", ""]
    if not f.is_file():
        return lines + [f"Profile `{profile}`: not run: `make bench`."]
    r, m = read_json(f), read_json(f)["machine"]
    # The wall times as they are now, not at bench time: the notebooks of the last `make reproduce`, its history, and
    # the last `make test` on this checkout (each where one was recorded).
    live = wall_times(Path(results_dir), profile)
    r["notebooks"] = live["notebooks"] or r.get("notebooks", {})
    if live["make_reproduce"]:
        r["make_reproduce"] = live["make_reproduce"]
    if "missing" not in live["make_test"]:
        r["make_test"] = live["make_test"]
    lines += [f"The cost figures are ratios of two CPU timings taken in one process (`python -m disback.bench`, "
              f"{r['date']}, profile `{r['profile']}`, setting `{r['setting']}`) on {m['platform']}, "
              f"{m['cpu_count']} CPUs (1-min load {m['load_average_1min']}), torch {m['torch']}, {m['threads']} "
              f"thread(s); teacher: {r['teacher']}. The absolute times beside them, and the wall times of the "
              f"notebooks and of `make test` (as last run on this checkout), hold for their machine only.", ""]
    lines += _markdown(table_rows(r))
    src = f.relative_to(root) if f.is_relative_to(root) else f
    return lines + ["", f"Source: [`{src}`]({src})."]


REPRODUCE_TIME = "reproduce_time.json"  # in results/<profile>/: every `make reproduce`, appended by the Makefile


def _commit() -> str | None:
    """The checkout's commit (``+dirty`` when tracked files differ from it), or None outside a git checkout."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "disback", "notebooks", "params"]).returncode
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def record_reproduce_time(results: Path, profile: str, seconds: float, rc: int, from_empty: bool, jobs: int,
                          commit: str | None = None, finished: str | None = None, note: str | None = None) -> Path:
    """Append one ``make reproduce`` (its notebooks' wall time) to ``results/<profile>/reproduce_time.json``.
    ``commit``, ``finished`` and ``note`` enter a run after the fact (default: HEAD and now, no note)."""
    out = Path(results) / profile / REPRODUCE_TIME
    history = read_json(out)["runs"] if out.is_file() else []
    history.append({"seconds": seconds, "passed": rc == 0, "from_empty_runs": from_empty, "jobs": jobs,
                    "commit": commit or _commit(), "machine": machine(),
                    "finished": finished or datetime.datetime.now().isoformat(timespec="seconds"),
                    **({"note": note} if note else {})})
    write_json(out, {"runs": history})
    return out


def record_test_time(results: Path, seconds: float, passed: bool) -> Path:
    """Write ``<results>/test_time.json`` for the bench to quote (called by the Makefile's ``test`` target)."""
    out = Path(results) / TEST_TIME
    write_json(out, {"seconds": seconds, "passed": passed, "machine": machine(),
                     "finished": datetime.datetime.now().isoformat(timespec="seconds")})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu", help=f"one of {tuple(SCALE)}")
    ap.add_argument("--results", default="results", help="results root: writes <results>/<profile>/bench.json")
    ap.add_argument("--runs", default="runs", help="runs root: the teacher of notebook 01 is reused when there")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the notebooks run single-threaded)")
    ap.add_argument("--record-test-time", type=float, metavar="SECONDS",
                    help="only record `make test`'s wall time (with --test-rc) and exit")
    ap.add_argument("--test-rc", type=int, default=0, help="exit status of `make test`'s pytest runs (or of reproduce)")
    ap.add_argument("--record-reproduce-time", type=float, metavar="SECONDS",
                    help="only append `make reproduce`'s wall time (with --test-rc, --from-empty, --jobs) and exit")
    ap.add_argument("--from-empty", type=int, default=0, help="1 when runs/<profile>/ held no finished run at the start")
    ap.add_argument("--jobs", type=int, default=2, help="make's -j for the recorded reproduce")
    ap.add_argument("--commit", default=None, help="with --record-reproduce-time: the run's commit (default HEAD)")
    ap.add_argument("--finished", default=None, help="with --record-reproduce-time: when it ended (default now)")
    ap.add_argument("--note", default=None, help="with --record-reproduce-time: a note kept with the entry")
    args = ap.parse_args(argv)
    root = Path.cwd()
    if args.record_reproduce_time is not None:
        out = record_reproduce_time(Path(args.results), args.profile, args.record_reproduce_time, args.test_rc,
                                    bool(args.from_empty), args.jobs, args.commit, args.finished, args.note)
        print(f"wrote {out}")
        return
    if args.record_test_time is not None:
        print(f"wrote {record_test_time(Path(args.results), args.record_test_time, args.test_rc == 0)}")
        return
    if args.profile not in SCALE:
        raise SystemExit(f"--profile {args.profile}: must be one of {tuple(SCALE)}")
    if not (root / "notebooks").is_dir():
        raise SystemExit(f"{root}: no notebooks/ folder (run from the repository root)")
    torch.set_num_threads(args.threads)
    record = run(args.profile, Path(args.results).resolve(), Path(args.runs), root)
    print("\n".join(_markdown(table_rows(record))))
    print(f"wrote {Path(args.results) / args.profile / 'bench.json'} in {record['bench_seconds']:.0f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
