"""``tumorseg report``: a static HTML page with PNG montages and GIFs, to share without a server,
and the same NiiVue viewer as ``tumorseg view``, opening from disk.

Everything the pages need sits beside them (``index.html``, ``<case>_montage.png``,
``<case>_axial.gif``; ``viewer.html`` with ``niivue.umd.js``, ``viewer.js``, ``viewer.css``,
``cases.js`` and ``volumes/case-<n>.js``), so the folder can be zipped and mailed. The viewer's
volumes are base64 text inside scripts because a page opened from disk (``file://``) may load
scripts but not fetch files.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.conventions import CLASSES, REGIONS
from tumorseg.io import atomic_write_bytes, atomic_write_text
from tumorseg.viewer.assets import ASSETS, asset
from tumorseg.viewer.page import render_page
from tumorseg.viewer.store import CLASS_COLOURS, CaseVolumes, ResultsStore, render_slice

__all__ = ["build_report"]

_NAMES = {"NCR": "necrosis", "ED": "edema", "ET": "enhancing tumour"}


def _tumour_slices(vol: CaseVolumes, count: int) -> list[int]:
    """``count`` axial slices spread over the tumour (the whole volume when there is none)."""
    labels = vol.pred if vol.ref is None else np.maximum(vol.pred, vol.ref)
    rows = np.flatnonzero(labels.reshape(-1, labels.shape[2]).any(axis=0))
    lo, hi = (int(rows[0]), int(rows[-1])) if rows.size else (0, labels.shape[2] - 1)
    return sorted({int(round(i)) for i in np.linspace(lo, hi, count)})


def _montage(
    vol: CaseVolumes, *, convention: str, modality: str | None, slices: list[int], columns: int
) -> bytes:
    from PIL import Image

    sources = ["pred", "ref"] if vol.ref is not None else ["pred"]
    tiles = [
        [
            Image.open(
                io.BytesIO(
                    render_slice(
                        vol,
                        view="axial",
                        index=i,
                        modality=modality,
                        source=s,
                        convention=convention,
                        min_size=160,
                    )
                )
            )
            for i in slices
        ]
        for s in sources
    ]
    w, h = tiles[0][0].size
    rows_per_source = -(-len(slices) // columns)
    sheet = Image.new("RGB", (columns * w, rows_per_source * len(sources) * h), (0, 0, 0))
    for block, row in enumerate(tiles):
        for k, tile in enumerate(row):
            r, c = divmod(k, columns)
            sheet.paste(tile, (c * w, (block * rows_per_source + r) * h))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _gif(vol: CaseVolumes, *, convention: str, modality: str | None, max_frames: int) -> bytes:
    from PIL import Image

    depth = vol.pred.shape[2]
    indices = sorted({int(i) for i in np.linspace(0, depth - 1, min(depth, max_frames))})
    frames = [
        Image.open(
            io.BytesIO(
                render_slice(
                    vol,
                    view="axial",
                    index=i,
                    modality=modality,
                    convention=convention,
                    min_size=192,
                )
            )
        ).convert("P")
        for i in indices
    ]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return buf.getvalue()


def build_report(
    output_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    dest: str | os.PathLike[str] | None = None,
    label_convention: str | None = None,
    modality: str | None = "flair",
    montage_slices: int = 12,
    columns: int = 6,
    gif: bool = True,
    max_frames: int = 64,
    viewer: bool = True,
) -> Path:
    """Write a static report of every case of an output folder.

    Args:
        output_dir: folder of ``<case_id>.nii.gz`` masks.
        data_dir: dataset folder with the images and reference labels, or None (masks only).
        dest: the report folder; default ``<output_dir>/report``.
        label_convention: convention of the masks (default: the dataset's, else brats2021).
        modality: image under the overlay (the first available when the case lacks it).
        montage_slices: axial slices per montage, spread over the tumour.
        columns: montage tiles per row.
        gif: also write an animated GIF through all axial slices.
        max_frames: most frames per GIF.
        viewer: also write ``viewer.html``, the interactive NiiVue viewer of every case, with
            its scripts and the cases' cropped volumes (opens from disk, no server).

    Returns:
        The path of ``index.html``.

    Raises:
        FileNotFoundError: for a missing folder.
        ValueError: when the output folder holds no mask, or for bad counts.
    """
    if montage_slices < 1 or columns < 1 or max_frames < 1:
        raise ValueError("montage_slices, columns and max_frames must be >= 1")
    store = ResultsStore(output_dir, data_dir=data_dir, label_convention=label_convention)
    cases = store.cases()
    if not cases:
        raise ValueError(f"no <case_id>.nii.gz mask in {str(store.output_dir)!r}")
    folder = Path(dest) if dest is not None else store.output_dir / "report"
    legend = " ".join(
        f'<span style="background:rgb{CLASS_COLOURS[c]};padding:0 6px">&nbsp;</span> '
        f"{c} ({_NAMES[c]})"
        for c in CLASSES
    )
    sections = []
    static: dict[str, Any] = {"cases": [], "summaries": {}}
    for number, (case_id, entry) in enumerate(cases.items()):
        vol = store.load(entry)
        if viewer:
            _write_case_volumes(store, case_id, vol, folder, number, static)
        mod = modality if modality in vol.images else next(iter(vol.images), None)
        # Case ids come from file names on this machine; the files are still named from
        # a fixed pattern and every id is escaped in the page.
        montage_name = f"{case_id}_montage.png"
        atomic_write_bytes(
            folder / montage_name,
            _montage(
                vol,
                convention=entry.convention,
                modality=mod,
                slices=_tumour_slices(vol, montage_slices),
                columns=columns,
            ),
        )
        s = vol.summary
        volumes = ", ".join(f"{r} {s['volumes_ml'][r]:.2f} mL" for r in REGIONS)
        dice = (
            "; Dice " + ", ".join(f"{r} {s['dice'][r]:.3f}" for r in REGIONS) if s["dice"] else ""
        )
        rows = "prediction (top) and reference (bottom)" if vol.ref is not None else "prediction"
        parts = [
            f"<h2>{html.escape(case_id)}</h2><p>{html.escape(volumes + dice)}</p>",
            f"<p>Axial slices through the tumour, {rows}, on {html.escape(str(mod))}:</p>",
            f'<img src="{html.escape(montage_name)}" alt="montage">',
        ]
        if gif:
            gif_name = f"{case_id}_axial.gif"
            atomic_write_bytes(
                folder / gif_name,
                _gif(vol, convention=entry.convention, modality=mod, max_frames=max_frames),
            )
            parts.append(f'<p>All axial slices:</p><img src="{html.escape(gif_name)}" alt="gif">')
        sections.append("\n".join(parts))
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>tumorseg report</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:16px}img{max-width:100%}</style>"
        f"</head><body><h1>Segmentation report</h1><p>{legend}</p>"
        f"<p>{len(cases)} case(s) from {html.escape(str(store.output_dir))}</p>"
        + (
            '<p><a href="viewer.html">Open the interactive viewer</a> (NiiVue, in this folder: '
            "window/level, crosshair, 3D)</p>"
            if viewer
            else ""
        )
        + "\n<hr>\n".join(sections)
        + "</body></html>\n"
    )
    if viewer:
        for name in ASSETS:
            atomic_write_bytes(folder / name, asset(name))
        atomic_write_text(folder / "cases.js", f"window.TUMORSEG_STATIC = {json.dumps(static)};\n")
        atomic_write_text(
            folder / "viewer.html", render_page(token=None, prefix="", data_script="cases.js")
        )
    return atomic_write_text(folder / "index.html", page)


def _write_case_volumes(
    store: ResultsStore,
    case_id: str,
    vol: CaseVolumes,
    folder: Path,
    number: int,
    static: dict[str, Any],
) -> None:
    """``volumes/case-<number>.js`` (the case's volumes, base64) and its entries in ``static``."""
    script = f"volumes/case-{number:04d}.js"
    summary = dict(vol.summary, volume_script=script)
    volumes = {
        name: base64.b64encode(store.volume(case_id, name)).decode("ascii")
        for name in summary["volumes"]
    }
    atomic_write_text(
        folder / script,
        f"window.TUMORSEG_VOLUMES[{json.dumps(case_id)}] = {json.dumps(volumes)};\n",
    )
    static["summaries"][case_id] = summary
    static["cases"].append(
        {k: summary[k] for k in ("case_id", "volumes_ml", "dice", "has_reference", "modalities")}
    )
