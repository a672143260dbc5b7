"""Export trained scorers to the shipped model directory (CONTRACTS.md section 4)."""

from rankiq.training.export.parity import ParityError, check_parity, parity_inputs
from rankiq.training.export.writer import export_model, sha256_file

__all__ = ["ParityError", "check_parity", "export_model", "export_run", "parity_inputs",
           "sha256_file"]


def export_run(run_dir, out_dir, *, name=None, version="0.1.0", fold=None, parity_seed=0,
               calibrate=None):
    """Export a training run (``runs/NAME/``, CONTRACTS.md section 3) to ``out_dir``.

    Loads the run with :func:`rankiq.training.factory.load_run` and passes its config, data
    fingerprint,
    seed and cross-validated accuracy into the metadata. With ``calibrate`` (a pairs file) the
    QA thresholds are calibrated on it (:mod:`rankiq.training.export.calibrate`); otherwise they are
    the provisional defaults. Returns the metadata written.
    """
    from pathlib import Path

    from rankiq.training.factory import load_run
    from rankiq.training.runs import read_config

    if read_config(run_dir).get("model") in ("mse", "ssim"):
        raise ParityError(f"{run_dir}: metric baselines (mse/ssim) are not networks; nothing "
                          "to export")
    run = load_run(run_dir, fold=fold)
    cfg = dict(run.config)
    summary = dict(run.summary or {})
    data = cfg.get("data") or {}
    training = {k: cfg[k] for k in ("seed", "epochs", "folds", "model", "student", "activation")
                if k in cfg}
    training.update(run=Path(run_dir).name, fold=run.fold, epoch=run.epoch,
                    val_acc=run.val_acc, data_fingerprint=data.get("fingerprint"),
                    n_labelled=data.get("n_labelled"))
    extra = {"training": training, "accuracy": summary, "trained": True}
    grid = cfg.get("grid", (396, 396))
    if isinstance(grid, int):
        grid = (grid, grid)
    if calibrate is not None:
        from rankiq.training.export.calibrate import calibrate_thresholds

        extra.update(calibrate_thresholds(run.scorer, run.classifier, calibrate,
                                          mode=cfg.get("mode", "reference"),
                                          input_kind=cfg.get("input_kind", "magnitude"),
                                          grid=tuple(grid)))
    return export_model(run.scorer, run.classifier, out_dir,
                        name=name or Path(out_dir).name, version=version,
                        mode=cfg.get("mode", "reference"),
                        input_kind=cfg.get("input_kind", "magnitude"), grid=tuple(grid),
                        extra_metadata=extra, parity_seed=parity_seed)
