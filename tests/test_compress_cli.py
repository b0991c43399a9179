"""``tinyllm quantize`` and ``sample``/``eval --int8``: a quantized run beside the float one,
checked against its record and the run's checkpoint."""
import json

import numpy as np
import pytest

from tinyllm import cli, inference


@pytest.fixture
def run(shared_data, tmp_path):
    out = tmp_path / "run"
    cli.main(["train", "--preset", "tiny", "--out-dir", str(out), "--quiet", "--workers", "1",
              "--max-iters", "20"])
    return out


def _error(capsys, *argv):
    assert cli.run(list(argv)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("group", [64, 0])
def test_quantize_then_eval_and_sample_the_int8_model(run, group):
    r = cli.main(["quantize", "--out-dir", str(run), "--group-size", str(group)])
    assert r["int8_bytes"] < r["float_bytes"]
    record = json.loads((run / inference.INT8_RECORD).read_text())
    assert record["group_size"] == (group or None)
    full = cli.main(["eval", "--out-dir", str(run)])
    q = cli.main(["eval", "--out-dir", str(run), "--int8"])
    assert q["tokens"] == full["tokens"]
    assert q["loss"] != full["loss"]                                # another model ...
    assert abs(q["loss"] - full["loss"]) < 0.01 * full["loss"]      # ... within 1%
    _, _, model = inference.load_run(run, int8=True)
    assert any(type(m).__name__ == "QuantizedLinear" for m in model.modules())
    text = cli.main(["sample", "--out-dir", str(run), "--int8", "--num-tokens", "20",
                     "--greedy", "--prompt", "ROMEO:"])
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")


def test_int8_refused_when_missing_stale_damaged_or_present(run, capsys):
    assert "run `tinyllm quantize" in _error(capsys, "eval", "--out-dir", str(run), "--int8")
    cli.main(["quantize", "--out-dir", str(run)])
    assert "exists" in _error(capsys, "quantize", "--out-dir", str(run))
    path = run / inference.INT8_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert "sha256 does not match" in _error(capsys, "eval", "--out-dir", str(run), "--int8")
    cli.main(["quantize", "--out-dir", str(run), "--force"])
    cli.main(["eval", "--out-dir", str(run), "--int8"])             # fine again
    cli.main(["train", "--resume", "--out-dir", str(run), "--quiet", "--max-iters", "25"])
    assert "earlier checkpoint" in _error(capsys, "eval", "--out-dir", str(run), "--int8")


def test_the_int8_logits_stay_close_to_the_float_model(run):
    inference.quantize_run(run)
    _, tok, f = inference.load_run(run)
    _, _, q = inference.load_run(run, int8=True)
    idx = np.array([tok.encode("ROMEO:\nWhat")])
    a, b = f(idx).data, q(idx).data
    rms = float(np.sqrt((a ** 2).mean()))
    assert 0 < float(np.sqrt(((a - b) ** 2).mean())) < 0.02 * rms
