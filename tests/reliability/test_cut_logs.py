"""A process killed while appending to a run's JSON-lines logs (``metrics.jsonl``,
``attempts.jsonl``) leaves a line cut short: it is skipped, and it must not swallow the next
process's first row (for attempts.jsonl that row can be ``completed``, which closes the run)."""
from harness.run_dir import RunDir
from harness.sweep import records
from harness.tracking import store


def test_a_cut_metrics_line_is_skipped_and_keeps_the_next_rows(tmp_path):
    store.append_metrics(tmp_path, {"train/loss": 1.0}, step=1)
    with open(RunDir(tmp_path).metrics_log, "a") as f:
        f.write('{"key": "train/loss", "val')  # killed mid-write
    store.append_metrics(tmp_path, {"train/loss": 0.5, "val/loss": 0.7}, step=2)
    rows = store.read_metrics(tmp_path)
    assert [(r["key"], r["step"], r["value"]) for r in rows] == [
        ("train/loss", 1, 1.0), ("train/loss", 2, 0.5), ("val/loss", 2, 0.7)]


def test_a_cut_attempt_line_does_not_hide_the_completion_that_follows(tmp_path):
    records.log_attempt(tmp_path, "start")
    with open(RunDir(tmp_path).attempts, "a") as f:
        f.write('{"event": "preem')  # killed mid-write
    assert not records.is_closed(tmp_path)
    records.log_attempt(tmp_path, "completed", seeds=[0])
    assert [a["event"] for a in records.read_attempts(tmp_path)] == ["start", "completed"]
    assert records.is_closed(tmp_path)
