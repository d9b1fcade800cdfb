"""Results layer: the only code that writes files for a run or a comparison.

`io` records a run directory crash-safely (`RunRecorder`, `RunSummary`),
`tracking` mirrors its rounds to TensorBoard, `stats` gives Student-t intervals
and paired tests over seeds (scipy), `tables` builds the `compare` table and
report, `plots` draws accuracy vs round / bytes and per-domain bars (styles and
panels from `plotkit`), `tradeoff` a grid's accuracy against server-bound bytes.
Nothing here imports flwr or torch.
"""

from .io import (RunRecorder, RunSummary, SCHEMA_VERSION, append_jsonl, atomic_write_bytes, atomic_write_json,
                 atomic_write_text, machine_info, package_versions, read_jsonl, read_summary,
                 write_csv_atomic)
# Plotting and statistics pull in matplotlib and scipy (about a second of start-up): every
# ClientApp process imports this package, so they load when first used, not here.
_LAZY = {"accuracy_series": "plots", "accuracy_vs_bytes_series": "plots", "plot_accuracy_vs_bytes": "plots",
         "plot_accuracy_vs_round": "plots", "plot_per_domain_bars": "plots", "mean_ci": "stats",
         "paired_diff_ci": "stats", "t_quantile": "stats", "build_table": "tables", "write_report": "tables",
         "write_table": "tables"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RunRecorder", "RunSummary", "SCHEMA_VERSION", "append_jsonl", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
    "machine_info", "package_versions", "read_jsonl", "read_summary", "write_csv_atomic",
    "accuracy_series", "accuracy_vs_bytes_series", "plot_accuracy_vs_bytes", "plot_accuracy_vs_round",
    "plot_per_domain_bars", "mean_ci", "paired_diff_ci", "t_quantile", "build_table", "write_report", "write_table",
]
