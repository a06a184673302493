"""molsample.quickstart: the pipeline on a tiny checkpoint and its errors."""
import json

import numpy as np

from molsample.cli import main
from molsample.io import samples_kind

from conftest import ROOT

TINY = ROOT / "configs" / "tiny-aldp-data.yaml"


def test_quickstart_pipeline_on_a_tiny_checkpoint(tmp_path, capsys):
    assert main(["train", str(TINY), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = tmp_path / "qs"
    assert main(["export-model", str(tmp_path / "run" / "checkpoint.pt"), "--out", str(tmp_path / "m.pt")]) == 0
    assert (tmp_path / "m.pt").stat().st_size < (tmp_path / "run" / "checkpoint.pt").stat().st_size
    assert main(["quickstart", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(out),
                 "--n", "600", "--min-weights", "300", "--budget-seconds", "0", "--quiet"]) == 0
    meta = json.loads((out / "quickstart.json").read_text())
    assert meta["n_drawn"] == 600 and meta["n"] == 512            # the minimum, rounded up to whole batches
    with np.load(out / "samples.npz") as z:
        assert z["x"].shape == (512, 22, 3) and np.isfinite(z["log_q"]).all()
    with np.load(out / "raw_all.npz") as z:                 # every draw, weighted or not, as positions
        assert samples_kind(z) == "positions" and z["xyz"].shape == (600, 22, 3)
    report = (out / "report.md").read_text()
    assert "exact importance weights for 512" in report and "vs_md/" in report and "vs_reference/" in report
    assert (out / "vs_md" / "metrics.json").is_file() and (out / "vs_reference" / "metrics.json").is_file()
    ref = json.loads((out / "vs_reference" / "metrics.json").read_text())["reference"]
    assert ref["kind"] == "umbrella"                       # the system's settled reference


def test_quickstart_rejects_a_missing_checkpoint(tmp_path, capsys):
    assert main(["quickstart", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)]) == 2
    assert "configs/aldp-ic.yaml" in capsys.readouterr().err
