"""Writes a run's record: results.json, README.md (tables and targets) and PNG plots."""

import json
import textwrap
from pathlib import Path


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _spread(timing: dict) -> str:
    return f"{_time(timing['q25'])} – {_time(timing['q75'])}"


def _mib(size: int | None, missing: str = "–") -> str:
    return missing if size is None else f"{size / 2**20:.3g}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
        "",
    ]


def _skipped(suite: dict) -> list[str]:
    lines = [f"- skipped **{skip['name']}**: {skip['reason']}" for skip in suite["skipped"]]
    return [*lines, ""] if lines else []


def _seed_section(suite: dict) -> list[str]:
    rows = [
        [
            row["name"],
            _time(row["per_step_s"]["median"]),
            _spread(row["per_step_s"]),
            f"{_time(row['per_step_s']['min'])} – {_time(row['per_step_s']['max'])}",
            f"{row['speedup_vs_torch_eager']:.1f}×" if row["speedup_vs_torch_eager"] else "–",
        ]
        for row in suite["rows"]
    ]
    problem = suite["problem"]
    return [
        "## 1. Seed step",
        "",
        f"{' → '.join(map(str, problem['sizes']))}, batch {problem['batch']}, {problem['dtype']}. Time per "
        f"training step, median over repeats with the interquartile range; speedup = the documents' "
        f"train_step's median / the row's, in this run. fit: {problem['fit_steps_per_call']} steps per "
        f"call, compile excluded.",
        "",
        *_table(["step", "median / step", "IQR", "min – max", "speedup vs documents' train_step"], rows),
        *_skipped(suite),
    ]


def _scaling_section(suite: dict) -> list[str]:
    bp_rows = [row for row in suite["rows"] if row["name"] == "bp_jax sgd_step"]
    matmul = {(row["width"], row["batch"], row["dtype"]): row for row in suite["rows"] if row["name"] == "bare matmul"}
    table = []
    for row in bp_rows:
        bare = matmul.get((row["width"], row["batch"], row["dtype"]))
        memory = row["memory"]
        table.append(
            [
                row["dtype"],
                row["width"],
                row["batch"],
                _time(row["per_step_s"]["median"]),
                _spread(row["per_step_s"]),
                f"{row['tflops']:.3g}",
                f"{bare['tflops']:.3g}" if bare else "–",
                f"{row['pct_of_matmul']:.0f}%" if row.get("pct_of_matmul") else "–",
                _mib(memory["params_bytes"]),
                _mib(memory["donating"]["bytes"]),
                _mib(memory["not_donating"]["bytes"]),
                _mib(memory["device_peak_bytes_in_use"], missing="not available"),
            ]
        )
    others = [
        [
            row["name"],
            row["dtype"],
            row["width"],
            row["batch"],
            _time(row["per_step_s"]["median"]),
            f"{row['tflops']:.3g}",
            f"{row['pct_of_matmul']:.0f}%" if row.get("pct_of_matmul") else "–",
        ]
        for row in suite["rows"]
        if row.get("framework") == "torch"
    ]
    return [
        "## 2. Scaling",
        "",
        f"MLP width → width → width (ReLU), jitted `sgd_step` one call per step. FLOPs per step = "
        f"{suite['flops_per_step']}; the step executes 5/6 of that (no dx for the first layer). % of matmul = "
        f"step TFLOP/s over a bare (batch × width) @ (width × width) matmul's in this run. Memory: XLA's "
        f"compiled footprint (arguments + outputs − donated aliases + temporaries) with and without "
        f"donation, and the device's peak bytes in use (process high-water mark; {suite['memory_stats']} "
        f"here).",
        "",
        *_table(
            [
                "dtype",
                "width",
                "batch",
                "median / step",
                "IQR",
                "TFLOP/s",
                "matmul TFLOP/s",
                "% of matmul",
                "params MiB",
                "XLA MiB donating",
                "XLA MiB not donating",
                "device peak MiB",
            ],
            table,
        ),
        *(
            [
                "PyTorch on the largest size of each dtype:",
                "",
                *_table(["step", "dtype", "width", "batch", "median / step", "TFLOP/s", "% of matmul"], others),
            ]
            if others
            else []
        ),
        *_skipped(suite),
    ]


def _grad_section(suite: dict) -> list[str]:
    methods = list(suite["rows"][0]["per_call_s"]) if suite["rows"] else []
    rows = [
        [
            row["params"],
            *(_time(row["per_call_s"][method]["median"]) for method in methods),
            *(f"{row['ratio_to_forward'][method]:.3g}" for method in methods[1:]),
        ]
        for row in suite["rows"]
    ]
    return [
        "## 3. One backward pass instead of one computation per parameter",
        "",
        f"MLP w → w → 1 (tanh), batch {suite['batch']}, {suite['dtype']}, every function jitted, one call "
        f"timed (dispatch included: at small sizes every method sits on the same few-µs floor). Finite "
        f"differences: central, 2n forward passes via {suite['finite_differences']}.",
        "",
        *_table(["params n", *methods, *(f"{method} / forward" for method in methods[1:])], rows),
        *_skipped(suite),
    ]


def _ratio(value: float | None) -> str:
    return f"{value:.3g}×" if value else "–"


def _timing_cells(timing: dict) -> list[str]:
    return [_time(timing["median"]), _spread(timing), f"{_time(timing['min'])} – {_time(timing['max'])}"]


def _data_section(suite: dict) -> list[str]:
    group = lambda name: [row for row in suite["rows"] if row["group"] == name]
    steps = [
        [
            row["name"],
            row["rows"],
            *_timing_cells(row["per_step_s"]),
            _ratio(row["vs_full_batch"]),
            _ratio(row["torch_speedup"]),
        ]
        for row in group("step")
    ]
    compiles = [
        [row["name"], *_timing_cells(row["seconds"]), ", ".join(map(str, row["compilations"]))]
        for row in group("compile")
    ]
    commands = [[f"`{row['name']}`", *_timing_cells(row["seconds"])] for row in group("command")]
    tables = [
        [
            f"`{row['name']}`",
            *_timing_cells(row["seconds"]),
            f"{row['peak_memory_bytes'] / 1e9:.2f} GB" if "peak_memory_bytes" in row else "",
            f"{_time(row['over_baseline_s'])}"
            + (f" (goal ≤ {row['allowed_over_baseline_s']:g} s)" if row.get("allowed_over_baseline_s") else "")
            if "over_baseline_s" in row
            else "",
            f"{row['memory_over_baseline_in_tables']:.2f}×" if "memory_over_baseline_in_tables" in row else "",
        ]
        for row in group("table")
    ]
    problem = suite["problem"]
    return [
        "## 4. Data size",
        "",
        f"{' → '.join(map(str, problem['sizes']))}, {problem['dtype']}, x, y ~ N(0, 1). Time per step of "
        f"`fit(..., steps={problem['fit_steps_per_call']}, chunk_size={problem['chunk_size']})` (call time / "
        f"steps, compile excluded), in turns with the documents' train_step on rows drawn per step; "
        f"× full batch = the row's median / the full batch's; torch / this = the torch row's median / the "
        f"row's.",
        "",
        *_table(["step", "rows", "median / step", "IQR", "min – max", "× full batch", "torch / this"], steps),
        f"Compiling once: each round, a `fit` of a configuration never compiled (a new model's loss function; "
        f"{problem['first_fit']}), then one of the same configuration with {problem['second_fit']}; XLA "
        f"compilations counted by `jax.monitoring` (one number per round).",
        "",
        *_table(["fit call", "median", "IQR", "min – max", "compilations"], compiles),
        *(
            [
                "`python -m bp_jax train` wall time, each run a new process writing into a new folder, in turns:",
                "",
                *_table(["command", "median", "IQR", "min – max"], commands),
            ]
            if commands
            else []
        ),
        *(
            [
                "Tables of 2 000 000 rows (#34), each command a new process, in turns with its baseline (diabetes for "
                "train, pandas reading the table and writing a column as CSV for predict, `pandas.read_parquet` for "
                "`load`); peak memory is the process's; the memory over the baseline is in units of the table's "
                "float64 size (2 000 000 × 11 × 8 bytes; goal ≤ 5× for the numeric `train`):",
                "",
                *_table(
                    ["command", "median", "IQR", "min – max", "peak memory", "over its baseline", "memory over it"],
                    tables,
                ),
            ]
            if tables
            else []
        ),
        *_skipped(suite),
    ]


def _ensemble_section(suite: dict) -> list[str]:
    rows = [
        [
            row["members"],
            row["name"],
            "measured" if row["measured"] else "estimate",
            _time(row["per_step_s"]["median"]),
            _time(row["per_model_step_s"]["median"]),
            _spread(row["per_model_step_s"]),
            _ratio(row["vs_one_fit"]),
        ]
        for row in sorted(suite["rows"], key=lambda row: row["members"])
    ]
    problem = suite["problem"]
    return [
        "## 5. Ensembles",
        "",
        f"E MLPs {' → '.join(map(str, problem['sizes']))}, {problem['dtype']}, hand-written SGD with lr "
        f"{problem['lr']}, about {problem['model_steps_per_call']} model-steps per fit_ensemble call (20 to "
        f"20 000 steps). Per model-step = per ensemble step / E; × one fit = the row's per model-step / one "
        f"model's fit step, in this run. Estimates are E × one model's measured step, not runs.",
        "",
        *_table(
            ["E", "training", "", "median / ensemble step", "median / model-step", "IQR / model-step", "× one fit"],
            rows,
        ),
        *_skipped(suite),
    ]


def _sklearn_section(suite: dict) -> list[str]:
    problem = suite["problem"]
    fits = [
        [
            row["name"],
            row["task"],
            _time(row["seconds"]["median"]),
            _spread(row["seconds"]),
            f"{row['held_out_score']:.3f}",
            "" if row.get("n_iter") is None else row["n_iter"],
            _ratio(row["speedup_vs_sklearn"]),
            _ratio(row.get("time_over_bp_jax")),
        ]
        for row in suite["rows"]
        if row["group"] == "fit"
    ]
    grids = [
        [
            row["name"],
            "None" if row.get("n_jobs") is None else row["n_jobs"],
            row["members"],
            _time(row["seconds"]["median"]),
            _spread(row["seconds"]),
            _ratio(row["bp_jax_grid_speedup"]),
        ]
        for row in suite["rows"]
        if row["group"] == "grid"
    ]
    return [
        "## 6. scikit-learn",
        "",
        f"Configuration {problem['config']}; regression: {problem['regression']}; classification: "
        f"{problem['classification']}. Fit rows: seconds per (second) fit, held-out R² or accuracy, n_iter_ "
        f"(epochs, or lbfgs iterations), sklearn's time / bp_jax's, and each row's time / bp_jax's fit of the task. "
        f"Grid rows: "
        f"{problem['grid']} × {problem['folds']} folds, seconds per "
        f"search, and the row's time / bp_jax GridSearchCV's with the same n_jobs (−1: every CPU, "
        f"{problem.get('cpus', '?')} here).",
        "",
        *_table(
            ["fit", "task", "median", "IQR", "held-out score", "n_iter_", "× faster than sklearn", "time / bp_jax's"],
            fits,
        ),
        *_table(["grid search", "n_jobs", "members", "median", "IQR", "bp_jax GridSearchCV × faster"], grids),
        *_skipped(suite),
    ]


def _export_section(suite: dict) -> list[str]:
    problem = suite["problem"]
    rows = [
        [
            row["name"],
            row["rows"],
            _time(row["per_call_s"]["median"]),
            _spread(row["per_call_s"]),
            _time(row["per_row_s"]),
            _ratio(row["speedup_vs_predict"]),
            "" if row["max_abs_difference_from_predict"] is None else f"{row['max_abs_difference_from_predict']:.1e}",
        ]
        for row in suite["rows"]
    ]
    return [
        "## 7. export",
        "",
        f"{problem['run']}; rows: {problem['input']}. Seconds per call from rows in memory to predictions in "
        "memory; × predict = predict's path's time / the row's; |Δ| = the largest difference from predict's "
        "numbers, in the target's units.",
        "",
        *_table(["predictor", "rows", "median / call", "IQR", "per row", "× predict", "max |Δ|"], rows),
        *_skipped(suite),
    ]


def _autodiff_section(suite: dict) -> list[str]:
    per_example = [
        [
            row["batch"],
            row["name"],
            *_timing_cells(row["per_call_s"]),
            _time(row["per_example_s"]),
            _ratio(row["vs_batch_grad"]),
        ]
        for row in suite["rows"]
        if row["group"] == "per-example"
    ]
    second = [row for row in suite["rows"] if row["group"] == "second-order"]
    methods = list(second[0]["per_call_s"]) if second else []
    second_order = [
        [
            row["params"],
            *(_time(row["per_call_s"][method]["median"]) for method in methods),
            *(f"{row['ratio_to_grad'][method]:.3g}" for method in methods[2:]),
            f"{row['max_abs_diff_hvp_vs_hessian_v']:.1e}",
        ]
        for row in second
    ]
    return [
        "## 8. Autodiff beyond one gradient",
        "",
        f"Per-example gradients: {suite['per_example']}; time per call for all B rows, per example (÷ B), and "
        f"× batch grad = the row's median / the plain batch gradient's of the same B rows, in this run.",
        "",
        *_table(
            ["B", "per-example gradients", "median", "IQR", "min – max", "per example", "× batch grad"], per_example
        ),
        f"Second order: {suite['second_order']}, every function jitted, one call timed; / grad = the method's "
        f"median over jax.grad's; the HVP is checked against the full Hessian times v.",
        "",
        *_table(
            ["params n", *methods, *(f"{method} / grad" for method in methods[2:]), "max abs(HVP − H·v)"], second_order
        ),
        *_skipped(suite),
    ]


def _startup_section(suite: dict) -> list[str]:
    rows = [[f"`{name}`", *_timing_cells(timing)] for row in suite["rows"] for name, timing in row["seconds"].items()]
    ratios = ", ".join(f"{row['ratio']:.3g}×" for row in suite["rows"])
    return [
        "## 9. Start-up",
        "",
        "Wall time of new Python processes, one of each per round (the compile cache filled by a first run): "
        f"`{suite['train']}` over `{suite['jax_only']}` = {ratios or '–'} (medians).",
        "",
        *(_table(["command", "median", "IQR", "min – max"], rows) if rows else []),
        *_skipped(suite),
    ]


def _training_section(suite: dict) -> list[str]:
    rows = [
        [
            row["name"],
            row["steps_per_call"],
            _time(row["per_call_s"]["median"]),
            *_timing_cells(row["per_step_s"]),
            "–" if row["vs_base"] is None else f"{row['vs_base']:.3g}× {row['base']}",
        ]
        for row in suite["rows"]
    ]
    problem = suite["problem"]
    return [
        "## 10. Training options",
        "",
        f"The seed MLP on {problem['data']} as `bp-jax train` builds and calls it (batch {problem['batch']}, "
        f"SGD lr {problem['lr']}), in turns: early stopping's validation check ({problem['validation_rows']} "
        f"validation rows, every epoch), dropout {problem['dropout']}, and `--ensemble {problem['members']}` "
        f"against one model over the command's default run ({problem['command_steps']} steps).",
        "",
        *(_table(["", "steps a call", "a call", "median a step", "IQR", "min – max", "over"], rows) if rows else []),
        *_process_times(suite["rows"]),
        *_skipped(suite),
    ]


def _process_times(rows: list[dict]) -> list[str]:
    """A line on the commands' process wall times (rows with `process_s`), if any."""
    timed = [f"{row['name']}: {row['process_s']['median']:.3g} s" for row in rows if "process_s" in row]
    if not timed:
        return []
    return ["", f"The commands' processes, start to exit (medians): {'; '.join(timed)}.", ""]


def _plot(results: dict, out: Path) -> list[str]:
    """PNG files written (none where matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    suites = results["suites"]
    if suites.get("seed", {}).get("rows"):
        rows = suites["seed"]["rows"]
        figure, axes = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
        medians = [row["per_step_s"]["median"] * 1e6 for row in rows]
        spread = [
            [(row["per_step_s"]["median"] - row["per_step_s"]["q25"]) * 1e6 for row in rows],
            [(row["per_step_s"]["q75"] - row["per_step_s"]["median"]) * 1e6 for row in rows],
        ]
        axes.barh(
            [row["name"] for row in rows],
            medians,
            xerr=spread,
            color=["tab:orange" if row["framework"] == "torch" else "tab:blue" for row in rows],
        )
        axes.set(xscale="log", xlabel="µs per step (median, IQR bars)", title="Seed step 10 → 5 → 1, batch 32")
        axes.invert_yaxis()
        written.append(_save(figure, out / "seed.png"))
    if suites.get("scaling", {}).get("rows"):
        rows = suites["scaling"]["rows"]
        dtypes = sorted({row["dtype"] for row in rows})
        figure, all_axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.5), squeeze=False)
        for axes, dtype in zip(all_axes[0], dtypes):
            for index, batch in enumerate(sorted({row["batch"] for row in rows})):
                for name, style in (("bp_jax sgd_step", "-o"), ("bare matmul", "--x")):
                    points = sorted(
                        (row["width"], row["tflops"])
                        for row in rows
                        if row["name"] == name and row["dtype"] == dtype and row["batch"] == batch
                    )
                    if points:
                        axes.plot(*zip(*points), style, color=f"C{index}", label=f"{name}, batch {batch}")
            axes.set(xscale="log", yscale="log", xlabel="width", ylabel="TFLOP/s", title=dtype)
            axes.legend(fontsize=7)
        written.append(_save(figure, out / "scaling.png"))
    if suites.get("grad", {}).get("rows"):
        rows = suites["grad"]["rows"]
        figure, axes = plt.subplots(figsize=(7, 5))
        for method in rows[0]["per_call_s"]:
            axes.plot(
                [row["params"] for row in rows],
                [row["per_call_s"][method]["median"] for row in rows],
                "-o",
                label=method,
            )
        axes.set(
            xscale="log",
            yscale="log",
            xlabel="parameters n",
            ylabel="seconds per call (median)",
            title="Gradient of the loss: reverse vs forward mode vs finite differences",
        )
        axes.legend()
        written.append(_save(figure, out / "grad.png"))
    if suites.get("data", {}).get("rows"):
        rows = suites["data"]["rows"]
        groups = [group for group in ("step", "compile", "command") if any(row["group"] == group for row in rows)]
        figure, all_axes = plt.subplots(len(groups), 1, figsize=(10, 4 * len(groups)), squeeze=False)
        for axes, group in zip(all_axes[:, 0], groups):
            chosen = [row for row in rows if row["group"] == group]
            if group == "step":
                minibatch = [row for row in chosen if "minibatch" in row["name"]]
                axes.plot(
                    [row["rows"] for row in minibatch],
                    [row["per_step_s"]["median"] * 1e6 for row in minibatch],
                    "-o",
                    label="bp_jax fit, minibatch of 32",
                )
                for index, row in enumerate(row for row in chosen if "minibatch" not in row["name"]):
                    axes.axhline(
                        row["per_step_s"]["median"] * 1e6, linestyle="--", color=f"C{index + 1}", label=row["name"]
                    )
                axes.set(
                    xscale="log",
                    yscale="log",
                    xlabel="rows in the data set",
                    ylabel="µs per step (median)",
                    title="Step cost by data size",
                )
                axes.legend(fontsize=7)
            else:
                axes.barh(
                    [textwrap.fill(row["name"], 45) for row in chosen],
                    [row["seconds"]["median"] for row in chosen],
                    xerr=[
                        [row["seconds"]["median"] - row["seconds"]["q25"] for row in chosen],
                        [row["seconds"]["q75"] - row["seconds"]["median"] for row in chosen],
                    ],
                )
                axes.set(
                    xscale="log" if group == "compile" else "linear",
                    xlabel="seconds (median, IQR bars)",
                    title="fit: compile, then re-use" if group == "compile" else "bp-jax train wall time",
                )
                axes.tick_params(axis="y", labelsize=7)
                axes.invert_yaxis()
        written.append(_save(figure, out / "data.png"))
    if suites.get("ensemble", {}).get("rows"):
        rows = suites["ensemble"]["rows"]
        figure, axes = plt.subplots(figsize=(8, 5.5))
        for index, name in enumerate(dict.fromkeys(row["name"] for row in rows if row["measured"])):
            points = sorted(
                (row["members"], row["per_model_step_s"]["median"] * 1e6) for row in rows if row["name"] == name
            )
            if len(points) > 1:
                axes.plot(*zip(*points), "-o", color=f"C{index}", label=name)
            else:  # one model: per model-step, training E of them one after another costs the same
                axes.axhline(points[0][1], linestyle="--", color=f"C{index}", label=f"{name} (= E one after another)")
        axes.set(
            xscale="log",
            yscale="log",
            xlabel="members E",
            ylabel="µs per model-step (median)",
            title="Ensembles of the seed MLP: time per model-step",
        )
        axes.legend(fontsize=7)
        written.append(_save(figure, out / "ensemble.png"))
    if suites.get("autodiff", {}).get("rows"):
        rows = suites["autodiff"]["rows"]
        figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
        per_example = [row for row in rows if row["group"] == "per-example"]
        for name in dict.fromkeys(row["name"] for row in per_example):
            points = sorted((row["batch"], row["per_call_s"]["median"]) for row in per_example if row["name"] == name)
            left.plot(*zip(*points), "-o", label=name)
        left.set(xscale="log", yscale="log", xlabel="batch B", ylabel="seconds per call (median)")
        left.set_title("Per-example gradients of the seed MLP", fontsize=10)
        left.legend(fontsize=7)
        second = [row for row in rows if row["group"] == "second-order"]
        for method in second[0]["per_call_s"] if second else []:
            times = [row["per_call_s"][method]["median"] for row in second]
            right.plot([row["params"] for row in second], times, "-o", label=method)
        right.set(xscale="log", yscale="log", xlabel="parameters n", ylabel="seconds per call (median)")
        right.set_title("Hessian-vector product vs full Hessian", fontsize=10)
        right.legend(fontsize=7)
        written.append(_save(figure, out / "autodiff.png"))
    return written


def _save(figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    figure.clf()
    return path.name


def write(results: dict, out: Path) -> None:
    """results.json, README.md and the PNGs under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = _plot(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    machine = results["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items() if version)
    lines = [
        f"# Benchmarks: {machine['date_utc']} on {machine['device']} ({machine['platform']})",
        "",
        f"CPU {machine['cpu']} × {machine['cpu_cores']} cores; {versions}; Python {machine['python']}; "
        f"load average at start {', '.join(f'{load:.2f}' for load in machine['load_average_1_5_15'])}. "
        f"Command: `{results['command']}`.",
        "",
    ]
    if results["smoke"]:
        lines += ["**Smoke run**: tiny sizes and few repeats, to check that the runner works. Not results.", ""]
    lines += [
        "## Targets",
        "",
        *_table(
            ["target", "device", "measured", "status"],
            [[t["target"], t["device"], t["measured"], t["status"]] for t in results["targets"]],
        ),
    ]
    sections = {
        "seed": _seed_section,
        "scaling": _scaling_section,
        "grad": _grad_section,
        "data": _data_section,
        "ensemble": _ensemble_section,
        "sklearn": _sklearn_section,
        "export": _export_section,
        "autodiff": _autodiff_section,
        "startup": _startup_section,
        "training": _training_section,
    }
    for name, suite in results["suites"].items():
        lines += sections[name](suite)
    lines += [f"![{Path(plot).stem}]({plot})" for plot in results["plots"]] or ["No plots: matplotlib is missing."]
    (out / "README.md").write_text("\n".join(lines) + "\n")
