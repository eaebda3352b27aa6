"""The image id in a Packer manifest (the `manifest` post-processor's JSON file).

Owns: reading the builds of the manifest's last run and picking the one artifact id
for a region (`amazon-ebs` writes `us-east-1:ami-0abc,eu-west-1:ami-0def`; other
builders write the id alone). Must not: guess between several candidates: it refuses
and names them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler.errors import PromotionRefused

MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def artifact_from_manifest(path: Path, *, region: str | None, build: str | None) -> tuple[str, str]:
    """The image id, and a note saying where it came from (for the commit)."""
    try:
        raw = path.read_bytes()[: MAX_MANIFEST_BYTES + 1]
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise PromotionRefused([f"cannot read {path}: {why}"]) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise PromotionRefused([f"{path} is larger than {MAX_MANIFEST_BYTES} bytes"])
    try:
        document: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PromotionRefused([f"{path} is not JSON ({exc})"]) from None
    builds = document.get("builds") if isinstance(document, dict) else None
    if not isinstance(builds, list) or not builds:
        raise PromotionRefused([f"{path} has no builds (is it a Packer manifest?)"])
    last = document.get("last_run_uuid")
    chosen = [b for b in builds if isinstance(b, dict)
              and (not last or b.get("packer_run_uuid") == last)]  # fmt: skip
    if build is not None:
        chosen = [b for b in chosen if b.get("name") == build]
    candidates: list[tuple[str, dict[str, Any]]] = []
    for entry in chosen:
        for artifact in str(entry.get("artifact_id") or "").split(","):
            artifact = artifact.strip()
            if not artifact:
                continue
            where, sep, image = artifact.rpartition(":")
            if sep and region is not None and where != region:
                continue
            candidates.append((image if sep else artifact, entry))
    names = sorted({str(b.get("name")) for b in chosen})
    if not candidates:
        what = f" for region {region}" if region else ""
        raise PromotionRefused(
            [f"{path}: no artifact{what} in the last run's builds ({', '.join(names) or 'none'})"]
        )
    if len({image for image, _ in candidates}) > 1:
        found = ", ".join(sorted({image for image, _ in candidates}))
        raise PromotionRefused(
            [f"{path}: several artifacts ({found}) in builds {', '.join(names)}; "
             "choose one with --build NAME"]
        )  # fmt: skip
    image, entry = candidates[0]
    note = f"packer manifest {path.name} build {entry.get('name')}"
    if entry.get("packer_run_uuid"):
        note += f" run {entry.get('packer_run_uuid')}"
    return image, note
