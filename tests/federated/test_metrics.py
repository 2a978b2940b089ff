import json

from pocketlearn.federated.metrics import MetricsLog, read_metrics


def _write(path, rounds, torn=False):
    text = "".join(json.dumps({"round": r, "loss": r / 10}) + "\n" for r in rounds)
    path.write_text(text + ('{"round": 9, "lo' if torn else ""))


def test_read_metrics_keeps_the_last_record_of_each_round(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [1, 2, 3, 1, 2], torn=True)
    lines = path.read_text().splitlines()
    lines[3] = json.dumps({"round": 1, "loss": 9.0})  # the rerun's round 1
    path.write_text("\n".join(lines))
    records = read_metrics(path)
    assert [r["round"] for r in records] == [1, 2, 3]
    assert records[0]["loss"] == 9.0


def test_truncate_drops_later_rounds_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [1, 2, 3], torn=True)
    log = MetricsLog(path)
    assert log.truncate(2) == 1
    log.append({"round": 3, "loss": 0.0})
    assert [json.loads(line)["round"] for line in path.read_text().splitlines()] == [1, 2, 3]
