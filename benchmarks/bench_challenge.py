"""Benchmark of `tumorseg evaluate --challenge gli` on the real 240x240x155 study.

Scores each of the five BraTS 2020 algorithm segmentations of TCGA-DU-7294 (``../shared/data``,
BraTS 2018-2021 labels, so every map is converted to the 2024 numbering) with
:func:`tumorseg.metrics.challenge.evaluate_challenge` in one process, and, in the same run, the
package called directly on the converted files, so the cost of the wrapper (reading,
converting, writing the scratch files, parsing) shows as a ratio. The one-time cost of
importing panoptica (which imports torch) is reported apart.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

CASE = "TCGA-DU-7294"
ALGORITHMS = ("hnfnetv1-20", "isen-20", "sanet0-20", "scan-20", "yixinmpl-20")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LUT_2021_TO_2024 = np.array([0, 1, 2, 0, 3], dtype=np.uint8)


def run() -> str:
    """Markdown section: seconds per real case, wrapper and direct package call."""
    title = "## BraTS 2024+ challenge scoring (`tumorseg evaluate --challenge gli`)\n"
    ref_path = SHARED / "brats2020_layout" / CASE / f"{CASE}_seg.nii.gz"
    seg_dir = SHARED / "reference_segmentations" / CASE
    if not ref_path.is_file() or not seg_dir.is_dir():
        return title + f"\nSkipped: the real study is not at {SHARED}.\n"

    import nibabel as nib

    start = time.perf_counter()
    from tumorseg.metrics.challenge import (
        challenge_evaluator,
        evaluate_challenge,
        load_challenge_package,
    )

    brats_evaluation, _ = load_challenge_package()
    evaluator = challenge_evaluator("gli")
    first_use = time.perf_counter() - start

    ours, direct = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ref_img = nib.load(str(ref_path))
        ref = np.asanyarray(ref_img.dataobj)
        ref24 = tmp / "ref24.nii.gz"
        nib.save(nib.Nifti1Image(LUT_2021_TO_2024[ref], ref_img.affine, ref_img.header), ref24)
        for algo in ALGORITHMS:
            pred_dir = tmp / algo
            pred_dir.mkdir()
            (pred_dir / f"{CASE}.nii.gz").symlink_to(seg_dir / f"{algo}.nii.gz")
            t0 = time.perf_counter()
            evaluate_challenge(
                pred_dir,
                SHARED / "brats2020_layout",
                challenge="gli",
                num_workers=0,
                progress=False,
            )
            ours.append(time.perf_counter() - t0)
            pred_img = nib.load(str(seg_dir / f"{algo}.nii.gz"))
            pred24 = tmp / f"{algo}24.nii.gz"
            pred = np.asanyarray(pred_img.dataobj)
            nib.save(
                nib.Nifti1Image(LUT_2021_TO_2024[pred], pred_img.affine, pred_img.header), pred24
            )
            t0 = time.perf_counter()
            brats_evaluation.evaluate_single_exam(str(pred24), str(ref24), CASE, evaluator)
            direct.append(time.perf_counter() - t0)

    ratio = statistics.mean(ours) / statistics.mean(direct)
    lines = [
        title,
        f"Real study {CASE} (240x240x155, 1 mm, BraTS 2018-2021 labels converted to the 2024 "
        "numbering): each of the five BraTS 2020 algorithm segmentations scored once against "
        "its `_seg`, one process (`num_workers=0`), configuration `gli` (six region groups).\n",
        "| what | seconds per case (mean over 5) | min | max |",
        "|---|---|---|---|",
        f"| `evaluate_challenge` (read, convert, score, parse, no report files) | "
        f"{statistics.mean(ours):.1f} | {min(ours):.1f} | {max(ours):.1f} |",
        f"| package alone: `evaluate_single_exam` on converted files | "
        f"{statistics.mean(direct):.1f} | {min(direct):.1f} | {max(direct):.1f} |",
        "",
        f"Wrapper / package ratio (same run): {ratio:.2f}. One-time cost of importing "
        f"panoptica (it imports torch) and loading the `gli` evaluator: {first_use:.1f} s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
