"""`tumorseg report`: a static page with montages and GIFs; the `view` verb's wiring."""

from __future__ import annotations

from pathlib import Path

import pytest

from tumorseg.cli import build_parser, main
from tumorseg.viewer.assets import asset


def test_viewer_report_writes_page_montages_and_gifs(outputs: Path, dataset: Path) -> None:
    from PIL import Image

    dest = outputs / "shared-report"
    assert main(["report", "--dir", str(outputs), "--data", str(dataset), "--dest", str(dest)]) == 0
    page = (dest / "index.html").read_text()
    for case_id in ("SYN2021_000", "SYN2021_001"):
        assert f'src="{case_id}_montage.png"' in page and f'src="{case_id}_axial.gif"' in page
        montage = Image.open(dest / f"{case_id}_montage.png")
        assert montage.width > montage.height  # two rows per source: prediction, reference
        gif = Image.open(dest / f"{case_id}_axial.gif")
        assert gif.is_animated and gif.n_frames > 10  # Pillow merges identical (empty) frames
    assert "Dice WT" in page and "necrosis" in page
    assert not [p for p in dest.iterdir() if p.name.startswith(".")], "no temporaries left"
    # The interactive viewer beside it: the page, the vendored scripts, every case's volumes.
    assert 'href="viewer.html"' in page
    viewer = (dest / "viewer.html").read_text()
    assert 'src="niivue.umd.js"' in viewer and 'src="cases.js"' in viewer
    assert "http" not in viewer.split("<body>")[1] and "tumorseg-token" not in viewer
    assert (dest / "niivue.umd.js").read_bytes() == asset("niivue.umd.js")
    assert sorted(p.name for p in (dest / "volumes").iterdir()) == ["case-0000.js", "case-0001.js"]


def test_viewer_report_without_data_or_masks(outputs: Path, tmp_path: Path) -> None:
    from tumorseg.viewer import build_report

    index = build_report(outputs, gif=False, montage_slices=4, viewer=False)
    assert index == outputs / "report" / "index.html"
    assert "Dice" not in index.read_text() and not list(index.parent.glob("*.gif"))
    assert not (index.parent / "viewer.html").exists() and "viewer.html" not in index.read_text()
    (tmp_path / "empty").mkdir()
    assert main(["report", "--dir", str(tmp_path / "empty")]) == 2  # a clear error, exit 2
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "missing")


def test_viewer_cli_defaults_to_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["view", "--dir", "out"])
    assert (args.host, args.port, args.max_upload_mb) == ("127.0.0.1", 8050, 512)
    assert main(["view", "--dir", "/nonexistent/out"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["view", "--dir", ".", "--checkpoint", "/nonexistent/model.pt"]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_viewer_cli_refuses_a_missing_metrics_table(
    outputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["view", "--dir", "out", "--metrics", "m.csv"])
    assert args.metrics == "m.csv"
    assert main(["view", "--dir", str(outputs), "--metrics", str(outputs / "none.csv")]) == 2
    err = capsys.readouterr().err
    assert "metrics table" in err and "none.csv" in err and "Traceback" not in err
