"""The results.json schema: round trip, validation errors that name file and key, atomic writes."""

import json
import os

import pytest

from dsnet.results import (
    RESULT_KEYS,
    SCHEMA_VERSION,
    ResultsRecord,
    load_results,
    write_json_atomic,
    write_results,
)


def record_dict(**overrides):
    """A valid results record as a plain dict (what eval.py would write)."""
    data = dict(
        arch="mobilenet_v1", conv="dsconv", width=1.0, groups=None, image_size=28, in_chans=1,
        num_classes=10, dataset="fashion_mnist", seed=0, params=391_000, macs=70_000_000,
        train_macs=210_000_000,
        macs_breakdown={"pointwise": {"params": 300_000, "macs": 63_000_000},
                        "depthwise": {"params": 20_000, "macs": 3_500_000}},
        top1=0.91, top5=0.99, latency_ms_p50=4.5, latency_ms_p90=5.25, latency_ms_iqr=0.5,
        throughput_img_s=240.0, batch_size=64, device="cpu", device_name="Test CPU",
        precision="fp32", channels_last=False, num_threads=2, torch="2.14.1", git_rev="abc1234",
        ckpt_path="/runs/train/checkpoints/best.ckpt", run_dir="/runs/eval",
        schema_version=SCHEMA_VERSION,
    )
    data.update(overrides)
    return data


def write_raw(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_round_trip_keeps_every_value_and_key_order(tmp_path):
    record = ResultsRecord.from_dict(record_dict())
    path = tmp_path / "results.json"
    write_results(path, record)
    assert load_results(path) == record
    on_disk = json.loads(path.read_text())
    assert tuple(on_disk) == RESULT_KEYS
    assert on_disk["params"] == 391_000 and isinstance(on_disk["params"], int)
    assert on_disk["top1"] == 0.91
    assert on_disk["groups"] is None and on_disk["schema_version"] == SCHEMA_VERSION


def test_write_results_accepts_a_mapping_and_stores_floats_as_floats(tmp_path):
    path = tmp_path / "results.json"
    write_results(path, record_dict(width=1, throughput_img_s=240))  # ints where floats belong
    loaded = load_results(path)
    assert loaded.width == 1.0 and isinstance(loaded.width, float)
    assert isinstance(loaded.throughput_img_s, float)
    assert '"width": 1.0' in path.read_text()


def test_nullable_accuracy_without_checkpoint(tmp_path):
    path = write_raw(tmp_path / "results.json", record_dict(top1=None, top5=None, ckpt_path=None))
    record = load_results(path)
    assert record.top1 is None and record.top5 is None and record.ckpt_path is None


def test_missing_key_names_file_and_key(tmp_path):
    data = record_dict()
    del data["latency_ms_p50"]
    path = write_raw(tmp_path / "results.json", data)
    with pytest.raises(ValueError, match=r"results\.json: missing key\(s\) \['latency_ms_p50'\]"):
        load_results(path)


def test_unknown_key_names_file_and_key(tmp_path):
    path = write_raw(tmp_path / "results.json", record_dict(acc=0.9))
    with pytest.raises(ValueError, match=r"results\.json: unknown key\(s\) \['acc'\]"):
        load_results(path)


@pytest.mark.parametrize("key, value", [
    ("params", "391k"), ("params", True), ("params", 3.5), ("channels_last", 0),
    ("top1", "91%"), ("arch", None), ("macs_breakdown", {"pointwise": {"params": 1.5, "macs": 2}}),
])
def test_wrong_type_is_a_type_error_naming_the_key(tmp_path, key, value):
    path = write_raw(tmp_path / "results.json", record_dict(**{key: value}))
    with pytest.raises(TypeError, match=rf"results\.json: key '{key}': expected"):
        load_results(path)


@pytest.mark.parametrize("key, value, message", [
    ("top1", 91.0, "fraction in \\[0, 1\\]"),
    ("top5", -0.1, "fraction in \\[0, 1\\]"),
    ("width", 0.0, "expected > 0"),
    ("groups", 0, "expected >= 1"),
    ("latency_ms_p50", -1.0, "expected >= 0"),
    ("macs", 1_000, "macs_breakdown.*add up to 66500000"),
    ("macs_breakdown", {"pointwise": {"params": 1}}, "entry 'pointwise' must be"),
])
def test_out_of_range_value_is_a_value_error_naming_the_key(tmp_path, key, value, message):
    path = write_raw(tmp_path / "results.json", record_dict(**{key: value}))
    with pytest.raises(ValueError, match=message):
        load_results(path)


def test_non_finite_number_is_rejected_when_building_a_record():
    with pytest.raises(ValueError, match="key 'latency_ms_p90': expected a finite number"):
        ResultsRecord.from_dict(record_dict(latency_ms_p90=float("nan")))


def test_other_schema_version_is_refused(tmp_path):
    path = write_raw(tmp_path / "results.json", record_dict(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(ValueError, match=f"'schema_version' is {SCHEMA_VERSION + 1}"):
        load_results(path)


def test_not_json_names_the_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"arch": "mobilenet_v1",', encoding="utf-8")  # truncated file
    with pytest.raises(ValueError, match=r"results\.json: not valid JSON"):
        load_results(path)
    write_raw(path, [1, 2])
    with pytest.raises(TypeError, match="expected a JSON object, got list"):
        load_results(path)


def _dir_listing(path):
    return sorted(p.name for p in path.iterdir())


def test_atomic_write_leaves_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "results.json"
    write_results(path, record_dict())
    before = path.read_bytes()
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(path, {"params": object()})
    with pytest.raises(ValueError, match="Out of range float"):
        write_json_atomic(path, {"latency_ms_p50": float("inf")})
    assert path.read_bytes() == before
    assert _dir_listing(tmp_path) == ["results.json"]  # no temp file left behind


def test_atomic_write_leaves_no_file_when_validation_fails(tmp_path):
    with pytest.raises(ValueError, match="missing key"):
        write_results(tmp_path / "results.json", {"arch": "mobilenet_v1"})
    assert _dir_listing(tmp_path) == []


def test_atomic_write_cleans_up_when_the_final_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_results(path, record_dict(top1=0.5))

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_results(path, record_dict(top1=0.9))
    monkeypatch.undo()
    assert load_results(path).top1 == 0.5
    assert _dir_listing(tmp_path) == ["results.json"]
