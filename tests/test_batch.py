"""`plandiff batch` (issue 16): bad lines become error lines naming their field while the rest are
done; a driver killed with SIGKILL midway and rerun writes every id exactly once, with the text of an
uninterrupted run (greedy); a rerun of a finished batch writes nothing. The Ray Data predictor
answers a batch with a bad row marked. The batch module imports without torch. (tests/test_batch_ray.py: `ray job submit` and Ray Data on a local head node.)

All on the session's tiny random checkpoint with the in-process (`local`) executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plandiff.orchestrator import cli

OPTIONS = ["--max-new-tokens", "32", "--log-level", "ERROR"]


def prompts(n: int) -> list[dict]:
    return [{"id": f"p{i}", "prompt": f"question number {i}: what about {i * 7}?"} for i in range(n)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_records(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "a torn last line"
    return [json.loads(line) for line in text.splitlines()]


def batch(folder, *argv) -> int:
    return cli.main(["batch", "--model", str(folder), *OPTIONS, *map(str, argv)])


@pytest.fixture(scope="module")
def reference(compact_folder, tmp_path_factory) -> tuple[Path, dict]:
    """40 prompts and their uninterrupted greedy answers, by id."""
    folder = tmp_path_factory.mktemp("reference")
    source = write_jsonl(folder / "in.jsonl", prompts(40))
    assert batch(compact_folder, "--input", source, "--output", folder / "out.jsonl") == 0
    records = read_records(folder / "out.jsonl")
    assert len(records) == 40 and all("text" in r for r in records)
    return source, {r["id"]: r["text"] for r in records}


def test_bad_lines_are_error_lines_naming_the_field_and_the_rest_is_done(compact_folder, tmp_path, capsys):
    good = prompts(3)
    rows = [
        good[0],
        '{"id": "broken", "prompt": ',  # invalid JSON
        {"id": "no-prompt", "temperature": 0.0},
        {"id": "too-long", "prompt": "hello world " * 400},  # beyond the tiny model's 2,048 positions
        {"id": "bad-option", "prompt": "hi", "temperature": -1},
        {"id": "wrong-type", "prompt": "hi", "max_new_tokens": "8"},  # strict, as a JSON body
        {"id": "unknown", "prompt": "hi", "temprature": 0.5},
        {"id": "needs-tau", "prompt": "hi", "order": "threshold"},
        good[1],
        {"prompt": "no id"},
        {"id": "p0", "prompt": "the same id again"},
        {"id": "chat", "messages": [{"role": "user", "content": "hello"}], "max_new_tokens": 16},
        {"id": "bad-chat", "messages": [{"role": "robot", "content": "hello"}]},
        good[2],
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    assert batch(compact_folder, "--input", source, "--output", output) == 0
    records = read_records(output)
    assert len(records) == len(rows)
    by_line = {r["line"]: r for r in records}
    assert sorted(by_line) == list(range(1, len(rows) + 1))  # each line once
    expected = {  # line → (error type, field)
        2: ("InvalidLineError", None), 3: ("InvalidRequestError", "prompt"), 4: ("PromptTooLongError", "prompt"),
        5: ("InvalidRequestError", "temperature"), 6: ("InvalidRequestError", "max_new_tokens"),
        7: ("InvalidRequestError", "temprature"), 8: ("InvalidRequestError", "threshold"),
        10: ("MissingIdError", "id"), 11: ("DuplicateIdError", "id"), 13: ("InvalidRequestError", "messages.0.role"),
    }
    for line, (kind, field) in expected.items():
        error = by_line[line]["error"]
        assert (error["type"], error.get("field")) == (kind, field), (line, error)
        assert error["message"]
    for line in (1, 9, 12, 14):
        record = by_line[line]
        assert "error" not in record and isinstance(record["text"], str)
        assert record["usage"]["generated_tokens"] > 0 and record["usage"]["prompt_tokens"] > 0
    assert by_line[11]["id"] == "p0" and by_line[1]["id"] == "p0"  # reported, not merged
    assert by_line[10]["id"] is None and by_line[2]["id"] is None

    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["items"] == len(rows) and summary["succeeded"] == 4 and summary["failed"] == 10
    assert summary["failures"] == {"InvalidLineError": 1, "InvalidRequestError": 6, "PromptTooLongError": 1,
                                   "MissingIdError": 1, "DuplicateIdError": 1}
    assert summary["per_worker"]["local-0"]["items"] == 4
    assert summary["latency_p50_seconds"] <= summary["latency_p99_seconds"]
    assert "4 done, 10 failed" in capsys.readouterr().out

    # A rerun holds nothing new to do: every line (errors and id-less lines included) is skipped.
    before = output.read_bytes()
    assert batch(compact_folder, "--input", source, "--output", output) == 0
    assert output.read_bytes() == before
    assert json.loads((tmp_path / "out.summary.json").read_text())["skipped"] == len(rows)


def test_a_driver_killed_midway_resumes_every_id_exactly_once_with_the_same_text(compact_folder, reference, tmp_path):
    source, expected = reference
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "plandiff.orchestrator.cli", "batch", "--model", str(compact_folder), *OPTIONS,
               "--input", str(source), "--output", str(output), "--max-in-flight-per-worker", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the reference ran single-threaded too
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (output.exists() and output.read_text().count("\n") >= 8):
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    driver.stderr.close()
    first = read_records(output)
    assert 8 <= len(first) < len(expected), "killed midway"
    # What a write cut short would leave: a partial last line, with no newline.
    with open(output, "ab") as f:
        f.write(b'{"id": "p39", "line": 40, "text": "half a li')

    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    records = read_records(output)
    ids = [r["id"] for r in records]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))  # every id exactly once
    assert {r["id"]: r["text"] for r in records} == expected  # as an uninterrupted run
    assert records[:len(first)] == first  # nothing written before was touched


def test_plandiff_predictor_answers_a_batch_as_map_batches_hands_it(compact_folder):
    """A batch as Ray Data's default format gives it (a dict of numpy arrays); a bad row is marked,
    not fatal. (The predictor inside a real Ray Data pipeline: tests/test_batch_ray.py.)"""
    import numpy as np

    from plandiff.model import InvalidRequestError
    from plandiff.orchestrator.batch.ray_data import PlandiffPredictor

    predictor = PlandiffPredictor(str(compact_folder), options={"max_new_tokens": 16}, device="cpu")
    batch = {"id": np.array([1, 2, 3]), "prompt": np.array(["first", None, "third"], dtype=object)}
    out = predictor(batch)
    assert out["id"] == [1, 2, 3] and out["prompt"] == ["first", None, "third"]
    assert [e == "" for e in out["error"]] == [True, False, True]
    assert out["error"][1].startswith("InvalidRequestError") and out["generated_text"][1] is None
    assert all(isinstance(out["generated_text"][i], str) and out["generated_tokens"][i] > 0 for i in (0, 2))
    again = predictor({"prompt": np.array(["first"], dtype=object)})  # the actor's next call, same loop
    assert again["generated_text"] == [out["generated_text"][0]]
    with pytest.raises(InvalidRequestError) as err:
        PlandiffPredictor(str(compact_folder), options={"temperature": -1}, device="cpu")
    assert err.value.field == "temperature"


def test_the_batch_module_imports_without_torch():
    code = ("import sys, plandiff.orchestrator.batch.runner, plandiff.orchestrator.batch.ray_data, "
            "plandiff.orchestrator.bench_batch; print(sorted(m for m in ('torch', 'transformers', 'ray') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
