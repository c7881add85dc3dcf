"""The markdown report of gpu_suite.json (written by gpu_suite.py after every measurement).

    python benchmarks/perf/gpu_report.py results/gpu/gpu_suite.json    # re-render a report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DATA_WAIT_TARGET = 0.05  # of the step, ResNet-18 at 96^3, batch 32, bf16
BF16_TARGET = 1.8  # bf16 steps/s over fp32 steps/s


def fmt(v, spec: str = ".1f", none: str = "-") -> str:
    if v is None:
        return none
    return format(v, spec)


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def header(doc: dict) -> list[str]:
    s, e = doc["suite"], doc.get("env", {})
    peak = e.get("peak_label") or e.get("peak_note") or "-"
    lines = [f"# GPU suite: {e.get('name', '?')}", "",
             f"Device {e.get('name', '?')} ({peak}; {e.get('memory_gb', '-')} GiB), driver "
             f"{e.get('driver') or '-'}, torch {e.get('torch', '?')}, CUDA {e.get('cuda') or '-'}, "
             f"cuDNN {e.get('cudnn') or '-'}, MONAI {e.get('monai', '?')}, {e.get('cpus', '?')} "
             f"CPUs; cudnn.benchmark {e.get('cudnn_benchmark')}, TF32 convolutions "
             f"{e.get('cudnn_allow_tf32')}.",
             f"Mode {s.get('mode')}, started {s.get('started')}, {s.get('elapsed_s')} s of a "
             f"{s.get('budget_s')} s budget" + ("" if s.get("finished") else ", NOT FINISHED")
             + (f" ({s['watchdog']})" if s.get("watchdog") else "") + ".",
             f"Command: `{s.get('command')}`", ""]
    status = [f"{k} {v.get('status')}" for k, v in doc.items() if k != "suite"]
    lines += ["Sections: " + ", ".join(status) + ".", ""]
    for k, v in doc.items():
        for err in (v.get("errors") or []) if k != "suite" else []:
            lines.append(f"- {k} error: {err}")
    return lines


def steps_table(doc: dict) -> list[str]:
    rows = doc.get("steps", {}).get("rows") or []
    if not rows:
        return []
    r0 = rows[0]
    lines = [f"## Pretraining steps (engine step, batch {r0['batch']} at {r0['shape']})", "",
             "| model | objective | precision | steps/s | vol/s | peak GiB | data wait | "
             "host data share | TFLOP/step | MFU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        prec = r["precision"] + (" + channels_last_3d" if r["channels_last"] else "") + \
            (" + cudnn.benchmark" if r.get("cudnn_benchmark") else "")
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['model']} | {r['objective']} | {prec} | "
                         f"{r.get('error') or 'skipped: ' + r['skipped']} | | | | | | |")
            continue
        basis = f" ({r['mfu_basis']})" if r.get("mfu_basis") else ""
        lines.append(f"| {r['model']} | {r['objective']} | {prec} | {fmt(r['steps_s'], '.2f')} "
                     f"| {fmt(r['vol_s'])} | {fmt(r.get('peak_mem_gb'))} | "
                     f"{pct(r['data_wait_share'])} | {pct(r['host_data_share'])} | "
                     f"{fmt(r.get('tflop_per_step'), '.3g')} | {pct(r.get('mfu'))}{basis} |")
    return lines + ["", "Data wait: wall time blocked waiting for the prefetched batch. Host data "
                    "share: the engine's `data_fraction` (host time of fetch + augmentation "
                    "launch). MFU: counted FLOPs x steps/s / dense peak of the dtype.", ""]


def speedups(doc: dict) -> dict[tuple[str, str], dict[str, float]]:
    """bf16 (and bf16 + channels_last) steps/s over fp32, per (model, objective)."""
    out: dict = {}
    rows = [r for r in doc.get("steps", {}).get("rows") or [] if "steps_s" in r]
    for r in rows:
        if r["precision"] != "fp32":
            continue
        for s in rows:
            if (s["model"], s["objective"]) == (r["model"], r["objective"]) and \
                    s["precision"] == "bf16" and not s.get("cudnn_benchmark"):
                key = "bf16 + channels_last_3d" if s["channels_last"] else "bf16"
                out.setdefault((r["model"], r["objective"]), {})[key] = s["steps_s"] / r["steps_s"]
    return out


def data_table(doc: dict) -> list[str]:
    rows = doc.get("data_path", {}).get("rows") or []
    if not rows:
        return []
    lines = [f"## Store -> device batches (batch {rows[0]['batch']}, float16 + zstd store)", "",
             "| shape | path | vol/s | vs the DataLoader of the same row kind |",
             "|---|---|---|---|"]
    base = {}
    for r in rows:
        if "vol_s" in r and r["candidate"].startswith("DataLoader"):
            base[(r["shape"], "views" in r["candidate"])] = r["vol_s"]
    for r in rows:
        ref = base.get((r["shape"], "views" in r["candidate"]))
        ratio = f"{r['vol_s'] / ref:.2f}x" if ref and "vol_s" in r else "-"
        value = fmt(r.get("vol_s")) if "vol_s" in r else (r.get("error") or
                                                            "skipped: " + r.get("skipped", ""))
        lines.append(f"| {r['shape']} | {r['candidate']} | {value} | {ratio} |")
    return lines + [""]


def augment_table(doc: dict) -> list[str]:
    rows = doc.get("augment", {}).get("rows") or []
    if not rows:
        return []
    monai = next((r["ms_per_volume"] for r in rows if r["pipeline"].startswith("MONAI")), None)
    lines = [f"## Default augmentation pipeline on the device (batch {rows[0]['batch']} at "
             f"{rows[0]['shape']})", "", "| pipeline | ms / volume | vs MONAI per-sample |",
             "|---|---|---|"]
    for r in rows:
        ratio = f"{monai / r['ms_per_volume']:.2f}x" if monai else "-"
        lines.append(f"| {r['pipeline']} | {r['ms_per_volume']:.2f} | {ratio} |")
    return lines + [""]


def max_batch_table(doc: dict) -> list[str]:
    rows = doc.get("max_batch", {}).get("rows") or []
    if not rows:
        return []
    lines = [f"## Largest batch that trains ({rows[0]['objective']}, {rows[0]['precision']}, "
             f"{rows[0]['shape']})", "",
             "| model | largest batch | smallest failing | peak GiB at largest | search ended |",
             "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['error']} | | | |")
            continue
        lines.append(f"| {r['model']} | {r['largest']} | {fmt(r['smallest_failing'], 'd')} | "
                     f"{fmt(r.get('peak_mem_gb_at_largest'))} | {r['stopped']} |")
    return lines + [""]


def targets(doc: dict) -> list[str]:
    rows = [r for r in doc.get("steps", {}).get("rows") or [] if "steps_s" in r]
    quick = doc["suite"].get("mode") == "quick"
    lines = ["## Targets" + (" (quick mode: not the targets' configuration)" if quick else ""),
             "", "| target | measured | met? |", "|---|---|---|"]
    waits = [r for r in rows if r["model"] == "resnet18" and r["precision"] == "bf16"
             and not r.get("cudnn_benchmark")]
    for r in waits:
        cl = " + channels_last_3d" if r["channels_last"] else ""
        ok = r["data_wait_share"] < DATA_WAIT_TARGET
        lines.append(f"| data wait < 5 % of a step, ResNet-18 {r['objective']} bf16{cl} | "
                     f"{pct(r['data_wait_share'])} | {'yes' if ok else 'no'} |")
    for (model, objective), ratios in speedups(doc).items():
        best = max(ratios.values())
        text = ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
        lines.append(f"| bf16 >= 1.8x fp32 steps/s, {model} {objective} | {text} | "
                     f"{'yes' if best >= BF16_TARGET else 'no'} |")
    for model in dict.fromkeys(r["model"] for r in rows):
        mfus = [r.get("mfu") for r in rows if r["model"] == model]
        have = [m for m in mfus if m is not None]
        lines.append(f"| MFU reported, {model} | "
                     f"{', '.join(pct(m) for m in have) if have else 'no peak for this device'} | "
                     f"{'yes' if have else 'no'} |")
    return lines + [""]


def markdown(doc: dict) -> str:
    parts = header(doc) + targets(doc) + steps_table(doc) + data_table(doc) + \
        augment_table(doc) + max_batch_table(doc)
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
