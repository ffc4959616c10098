"""Clinical constants: the AAA threshold, size categories with follow-up intervals, the disclaimer.

Standard library only, so that any part of FedAAA (the coordinator included) can use them for free.
"""

from __future__ import annotations

from typing import NamedTuple

DISCLAIMER = "Research software, not a medical device: a radiologist must confirm every finding."

AAA_THRESHOLD_MM = 30.0  # an infrarenal aorta of 30 mm or more (outer to outer) is an aneurysm


class Category(NamedTuple):
    upper_mm: float  # exclusive upper bound of the maximum diameter
    name: str
    follow_up: str


# From ACR 2013 incidental-findings guidance and SVS 2018, in size order.
CATEGORIES: tuple[Category, ...] = (
    Category(25.0, "normal", "no aneurysm follow-up"),
    Category(AAA_THRESHOLD_MM, "ectatic (25-29 mm)", "ultrasound or CT every 5 years"),
    Category(35.0, "AAA 30-34 mm", "surveillance every 3 years"),
    Category(40.0, "AAA 35-39 mm", "surveillance every 2 years"),
    Category(45.0, "AAA 40-44 mm", "surveillance every year"),
    Category(50.0, "AAA 45-49 mm", "surveillance every 6 months"),
    Category(55.0, "AAA 50-54 mm", "surveillance every 3-6 months; repair threshold for women is 50 mm"),
    Category(float("inf"), "AAA >= 55 mm", "vascular surgery referral: repair threshold reached"),
)


def diameter_category(diameter_mm: float) -> tuple[str, str]:
    """Size category and the follow-up interval it implies."""
    for upper, name, follow_up in CATEGORIES:
        if diameter_mm < upper:
            return name, follow_up
    raise AssertionError(f"no size category for diameter {diameter_mm!r} mm")  # only NaN gets here


def is_aneurysm(diameter_mm: float) -> bool:
    """Whether a maximum diameter meets the AAA definition."""
    return diameter_mm >= AAA_THRESHOLD_MM
