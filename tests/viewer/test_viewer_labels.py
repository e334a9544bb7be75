"""Every label class of every convention gets a toggle and a colour in the viewer."""

from __future__ import annotations

from tumorseg.conventions import CLASS_COLOURS, CONVENTIONS
from tumorseg.viewer.volumes import label_table


def test_every_class_of_every_convention_has_a_colour() -> None:
    for name, convention in CONVENTIONS.items():
        table = label_table(name, CLASS_COLOURS)
        assert [row["name"] for row in table] == list(convention.classes), name
        assert len({tuple(row["colour"]) for row in table}) == len(table), name


def test_brats2024_resection_cavity_is_label_4_in_blue() -> None:
    table = {row["name"]: row for row in label_table("brats2024", CLASS_COLOURS)}
    assert table["RC"]["value"] == 4
    assert table["RC"]["colour"] == [60, 130, 250]
    assert table["ET"]["value"] == 3
