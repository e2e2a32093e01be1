"""The README's references stay complete: every setting of app/settings.py is in its Configuration
section under its environment name, and every metric the gateway exports is in its Metrics section,
under the name /metrics shows (a counter with its ``_total``)."""

from __future__ import annotations

import os

from app.metrics import Metrics
from app.settings import Settings
from tests.support import ROOT


def readme_section(title: str) -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert f"\n## {title}\n" in text, f"README has no '## {title}' section"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def exported_metric_names() -> list[str]:
    names = []
    for family in Metrics().registry.collect():
        names.append(family.name + "_total" if family.type == "counter" else family.name)
    return sorted(names)


def test_every_setting_is_in_the_configuration_reference():
    section = readme_section("Configuration")
    missing = [f"VGATE_{name.upper()}" for name in Settings.model_fields if f"`VGATE_{name.upper()}`" not in section]
    assert not missing, f"settings missing from README's Configuration section: {missing}"


def test_every_metric_is_in_the_metrics_reference():
    section = readme_section("Metrics and logs")
    names = exported_metric_names()
    assert len(names) >= 30 and "vgate_requests_total" in names  # the registry really was read
    missing = [n for n in names if f"`{n}`" not in section]
    assert not missing, f"metrics missing from README's Metrics and logs section: {missing}"

