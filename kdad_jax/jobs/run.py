"""The main job: per category read -> train (or resume) -> evaluate -> report / export.

``run(config, workdir, mode)`` is what ``python -m kdad_jax.main`` calls; it can be called from a
notebook as well. Teacher-pretraining configs (``task = 'pretrain_teacher'``) go to
``kdad_jax.jobs.pretrain``.
"""

import functools
import json
import os
import time

from kdad_jax import files
from kdad_jax.data import dataset, embedded
from kdad_jax.errors import UserError
from kdad_jax.evaluation import evaluate, metrics
from kdad_jax.jobs import predict, pretrain, validate
from kdad_jax.methods import get_method
from kdad_jax.report import html as html_report
from kdad_jax.report import tables as report
from kdad_jax.report import visualize
from kdad_jax.serve import export, parity
from kdad_jax.teachers import backbones, shipped
from kdad_jax.training import logs, parallel, train
from kdad_jax.training import workdir as workdir_module


def resolve_dataset(config, workdir: str):
    """(root, dataset name). An empty ``config.data.root`` means the embedded dataset."""
    if config.data.root:
        return os.path.abspath(config.data.root), os.path.basename(os.path.normpath(config.data.root))
    root = os.path.join(workdir, "embedded_data")
    if parallel.is_writer():  # the others wait, then read it from the shared workdir
        embedded.ensure(root, seed=0)
    parallel.barrier("embedded_data")
    return root, "embedded"


def _teacher_digests(teachers):
    """sha256 of each teacher file (None for a random-init teacher), in ``teachers``' order; a
    comma-separated entry (one teacher per scale) gets a list."""
    def digest(entry):
        files = entry.split(",")
        digests = [backbones.sha256(f) if os.path.isfile(f) else None for f in files]
        return digests[0] if len(digests) == 1 else digests

    digests = [digest(t) for t in teachers]
    return digests[0] if len(digests) == 1 else digests


def evaluate_category(config, workdir: str, method, data, trained, writer: bool):
    """Test maps -> metrics (undefined ones null with the reason), decision thresholds; process 0
    also writes heat maps, curve plots, ``thresholds.json`` and TensorBoard scalars.
    (result, the test maps [M, S, S] at ``config.image_size``)."""
    maps = evaluate.predict_maps(method, trained.params, trained.model_state, trained.frozen,
                                 trained.stats, data.test, config.eval.batch_size)
    original_size = config.eval.get("original_size", False)
    scored_maps, scored_masks, regions = maps, data.test_masks, data.test_regions
    if original_size:
        # Metrics as MVTec's evaluators compute them: each map brought to its image's own size.
        scored_masks, regions = dataset.original_ground_truth(data)
        scored_maps = evaluate.to_original_size(maps, data.test_sizes)
    result = evaluate.compute_metrics(scored_maps, data.test_labels, scored_masks, data.test_has_mask,
                                      data.test_defects, regions, tuple(config.eval.get("fpr_limits", (0.3,))))
    if original_size:  # the decision thresholds stay those of the maps where predict and exports score
        result.update(evaluate.f1_thresholds(maps, data.test_labels, data.test_masks, data.test_has_mask,
                                             data.test_defects))
    result["evaluated_at"] = "original size" if original_size else f"{config.image_size}x{config.image_size}"
    result["good_maxima"] = evaluate.border_maxima(maps, data.test_labels)

    @functools.lru_cache(maxsize=None)
    def validation_maps():
        return evaluate.predict_maps(method, trained.params, trained.model_state, trained.frozen,
                                     trained.stats, trained.validation, config.eval.batch_size)

    def validation_scores():
        return metrics.image_scores(validation_maps())

    if config.data.format == "mvtec_ad2":  # its protocol's SegF1, threshold from validation normals
        result["seg_threshold"] = evaluate.validation_threshold(validation_maps())
        result["seg_f1"] = evaluate.segmentation_f1(scored_maps, scored_masks, result["seg_threshold"])

    result["thresholds"] = evaluate.decision_thresholds(result, validation_scores,
                                                        config.eval.threshold_percentile)
    if not writer:
        return result, maps
    for line in report.unavailable_lines(data.name, result):
        print(f"note: {line}", flush=True)
    visualize.write_heatmaps(os.path.join(workdir, "heatmaps"), data, maps, config.eval.num_heatmaps)
    html_report.write_gallery(os.path.join(workdir, "report", data.name), data, maps,
                              result["thresholds"]["image_threshold"], visualize.color_range(maps))
    if config.eval.plots:
        report.plot_curves(os.path.join(workdir, "plots", f"{data.name}.png"), data.name, scored_maps,
                           data.test_labels, scored_masks, result)
    predict.save_thresholds(workdir, data.name, result["thresholds"], maps, trained.steps)
    eval_logs = logs.Logs(workdir)
    eval_logs.evaluation(data.name, trained.steps,
                         {k: result[k] for k in evaluate.METRIC_KEYS if result[k] is not None})
    eval_logs.close()
    return result, maps


def run(config, workdir: str, mode: str = "train") -> dict:
    """Train and/or evaluate every configured category; writes ``<workdir>/results.json``.

    A teacher-pretraining config (``task = 'pretrain_teacher'``) writes a teacher file instead.
    When a category fails after others finished, their results are written first (with the
    failure under ``failed``), then the error is raised."""
    validate.check(config)
    if mode == "export":
        export.check_format(config.get("export", {}).get("format", "jax_export"),
                            config.get("export", {}).get("precision", "float32"))
    if config.get("task") == "pretrain_teacher" and mode != "train":
        raise UserError("teacher pretraining has only --mode=train")
    with workdir_module.locked(workdir, parallel.is_writer()):
        if config.get("task") == "pretrain_teacher":
            return pretrain.run(config, workdir)
        return _run_categories(config, workdir, mode)


def _run_categories(config, workdir: str, mode: str) -> dict:
    start = time.time()
    writer = parallel.is_writer()  # only process 0 writes files and prints
    workdir_module.prepare(workdir, config, writer)
    root, dataset_name = resolve_dataset(config, workdir)
    builtin = shipped.builtin_name(config.teacher.checkpoint)
    if builtin and writer:
        made = shipped.record(builtin)
        print(f"teacher: built-in {builtin} (distilled here from {made['backbone'].split(' ')[0]}, "
              f"{made['steps']} steps; see kdad_jax/teachers/{builtin}.json)", flush=True)
    categories = dataset.list_categories(config.data.format, root, config.data.category)
    method = get_method(config)
    if writer and method.info.get("teacher_choice") not in (None, "configured checkpoint"):
        print(f"teacher: {method.info['teacher_choice']}", flush=True)
    per_category = {}
    together = config.train.get("parallel_categories", 1) if mode == "train" else 1
    for group in [categories[i:i + together] for i in range(0, len(categories), together)]:
        try:
            per_category.update(_run_group(config, workdir, method, root, group, mode, writer))
        except BaseException as e:
            if per_category and writer:
                results = _results(config, method, dataset_name, root, categories, per_category, start)
                results["failed"] = {", ".join(group): str(e) or type(e).__name__}
                _write_results(config, workdir, dataset_name, results, per_category, partial=True)
            raise
    results = _results(config, method, dataset_name, root, categories, per_category, start)
    if writer:
        _write_results(config, workdir, dataset_name, results, per_category)
    return results


def _read_category(config, root, name, writer):
    data = dataset.read_category(config.data.format, root, name, config.image_size)
    if config.eval.get("original_size", False) and data.test_sizes:
        evaluate.check_original_size_memory(name, data.test_sizes)
    if writer:
        print(f"{name}: {len(data.train)} train, {len(data.test)} test images "
              f"({int(data.test_labels.sum())} anomalous)", flush=True)
    return data


def _run_group(config, workdir, method, root, names, mode, writer) -> dict:
    """Train (or load), evaluate and (``mode='export'``) export categories; {name: result}.
    With ``config.train.parallel_categories`` > 1 they train as one program (a last group of one
    too: one model per device, whatever the device count)."""
    start = time.time()
    datas = [_read_category(config, root, name, writer) for name in names]
    grouped = mode == "train" and config.train.get("parallel_categories", 1) > 1
    if not grouped:
        trained = {names[0]: train.train_category(config, workdir, names[0], method, datas[0].train,
                                                  resume_only=(mode in ("eval", "export")),
                                                  validation_images=datas[0].validation)}
    else:
        trained = train.train_categories(config, workdir, names, method,
                                         [d.train for d in datas], [d.validation for d in datas])
    results = {}
    for name, data in zip(names, datas):
        results[name] = _evaluate_and_export(config, workdir, method, data, trained[name], mode,
                                             writer)
        results[name]["seconds"] = round(time.time() - start, 1)
        if len(names) > 1:
            results[name]["trained_with"] = [n for n in names if n != name]
    return results


def _evaluate_and_export(config, workdir, method, data, trained, mode, writer) -> dict:
    """Evaluate one trained category and (``mode='export'``) export it; its result dict."""
    result, maps = evaluate_category(config, workdir, method, data, trained, writer)
    result.update(teacher=trained.teacher, train_steps=trained.steps)
    if data.skipped:
        result["skipped_files"] = data.skipped
    if mode == "export" and writer:
        folder = os.path.join(workdir, "export", data.name)
        export_format = config.get("export", {}).get("format", "jax_export")
        precision = config.get("export", {}).get("precision", "float32")
        threshold = result["thresholds"]["image_threshold"]
        export.export_category(
            folder, method, trained, config.image_size,
            {"category": data.name, "threshold": threshold,
             "threshold_rule": result["thresholds"]["image_rule"], "test_metrics": {
                 k: result[k] for k in evaluate.METRIC_KEYS}},
            export_format=export_format, precision=precision, calibration_images=data.train,
            check=functools.partial(_parity, folder, method, trained, data, maps, threshold, export_format,
                                    precision, config.eval.threshold_percentile))
        print(f"{data.name}: exported to {folder} (load with kdad_jax.serve.deploy.load)", flush=True)
    return result


def _parity(folder, method, trained, data, maps, threshold, export_format, precision, percentile,
            written) -> dict:
    """The parity report of the artifact ``written`` against the test ``maps`` evaluation
    computed (printed); ``UserError`` when it does not score what training scored, so it is not
    exported."""
    report = parity.check(written, method, trained, data, maps, threshold, export_format, precision,
                          percentile)
    print(parity.describe(data.name, report), flush=True)
    if not report["ok"]:
        raise UserError(parity.refusal(folder, report))
    return report


def _results(config, method, dataset_name, root, categories, per_category, start) -> dict:
    mean = report.mean_over_categories(per_category)
    teacher_files = sorted({r["teacher"] for r in per_category.values()})
    return {
        "method": config.method,
        "model": method.info,
        "dataset": dataset_name,
        "data_format": config.data.format,
        "data_root": root,
        "categories": categories,
        "teacher": teacher_files[0] if len(teacher_files) == 1 else teacher_files,
        "teacher_sha256": _teacher_digests(teacher_files),
        "image_size": config.image_size,
        "train_steps": config.train.steps or None,  # per category below when set by epochs
        "train_epochs": config.train.get("epochs"),
        "batch_size": config.train.batch_size,
        **mean,
        "per_category": per_category,
        "seconds": round(time.time() - start, 1),
        "environment": logs.environment(),
    }


def _write_results(config, workdir, dataset_name, results, per_category, partial=False) -> None:
    """results.json, the tables and the printed table (process 0)."""
    files.write_text(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    mean = report.mean_over_categories(per_category)
    tables = report.write_tables(workdir, per_category, mean,
                                 f"{config.method} on {dataset_name} ({config.image_size}² images)")
    print(report.format_table(per_category, mean))
    page = html_report.write_report(workdir, results, per_category)
    if partial:
        print(f"results of the {len(per_category)} finished categor"
              f"{'y' if len(per_category) == 1 else 'ies'} written to "
              f"{os.path.join(workdir, 'results.json')} before the error below", flush=True)
        return
    print(f"teacher: {results['teacher']}; results: {os.path.join(workdir, 'results.json')}, "
          f"{', '.join(os.path.basename(t) for t in tables)}, {os.path.basename(page)}; "
          f"{results['seconds']:.0f} s")
