"""`tumorseg report`: a static page with montages and GIFs; the `view` verb's wiring."""

from __future__ import annotations

from pathlib import Path

import pytest

from tumorseg.cli import build_parser, main


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


def test_viewer_report_without_data_or_masks(outputs: Path, tmp_path: Path) -> None:
    from tumorseg.viewer import build_report

    index = build_report(outputs, gif=False, montage_slices=4)
    assert index == outputs / "report" / "index.html"
    assert "Dice" not in index.read_text() and not list(index.parent.glob("*.gif"))
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
