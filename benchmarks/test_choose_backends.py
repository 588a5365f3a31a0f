"""benchmarks/choose_backends.py runs end to end (one tiny size) and merges into an existing table."""
import json

import choose_backends
from harness import DEVICE
from hdkd.ops import measured


def test_choose_backends_smoke(tmp_path):
    out = tmp_path / "measured_backends.json"
    other = {"device": "elsewhere", "entries": []}
    out.write_text(json.dumps({"schema": measured.SCHEMA, "devices": {"other": other}}))
    choose_backends.main(["--smoke", "--out", str(out)])
    devices = measured.Table.load(str(out)).devices()
    assert devices["other"] == other  # another device kind's data is kept
    entries = devices[DEVICE.type]["entries"]
    assert {(e["op"], e["grad"]) for e in entries} == set(choose_backends.CASES)
    for e in entries:
        assert "torch" in e["ms"] and e["ms"][e["winner"]] == min(e["ms"].values())
