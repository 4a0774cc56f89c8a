"""docs/metrics.md against chaos.record.schema: every measurement, field and tag a run writes
is documented, and the document describes nothing that is not written."""

from __future__ import annotations

import re

from deploy_checks import documented_fields, documented_tags

from chaos.record.schema import COMMON_TAGS, MEASUREMENTS


def test_every_measurement_field_and_tag_is_documented() -> None:
    fields, tags = documented_fields(), documented_tags()
    missing: list[str] = []
    for name, m in MEASUREMENTS.items():
        if name not in fields:
            missing.append(f"measurement {name} (no section with a field table)")
            continue
        patterns = [re.compile(p) for p in fields[name]]
        missing += [
            f"{name}.{f}" for f in sorted(m.fields) if not any(p.fullmatch(f) for p in patterns)
        ]
        missing += [f"{name} tag {t}" for t in sorted(m.tags - COMMON_TAGS - tags.get(name, set()))]
    assert missing == [], "add these to docs/metrics.md"


def test_the_document_describes_only_what_is_written() -> None:
    fields, tags = documented_fields(), documented_tags()
    stale = [f"measurement {name}" for name in fields if name not in MEASUREMENTS]
    for name, documented in fields.items():
        m = MEASUREMENTS.get(name)
        if m is None:
            continue
        # a template such as `<phase>_count` is checked in the other direction only
        exact = [f for f in sorted(documented) if "\\w+" not in f]
        stale += [f"{name}.{f}" for f in exact if not m.has_field(f)]
        stale += [f"{name} tag {t}" for t in sorted(tags.get(name, set()) - m.tags)]
    assert stale == [], "docs/metrics.md names what nothing writes (or the schema misses it)"
