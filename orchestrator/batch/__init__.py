"""Batch generation over JSONL: `plandiff batch` (runner.py), resumable (output.py), per-line
requests and errors (lines.py), progress and summary; and `PlandiffPredictor` (ray_data.py), for
Ray Data pipelines. Torch-free at import, as the rest of the control plane. docs/batch.md."""
