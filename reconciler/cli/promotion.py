"""`reconciler promote` and `reconciler set-image`: images committed to the
desired-state repository (issue 18).

Owns: the two commands' options and output, and the ledger event a promotion leaves.
Must not: decide what may be promoted (reconciler.planning.promotion judges) or run
git itself (reconciler.promotion does).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from reconciler.cli.common import (
    complete_env,
    domain_errors,
    duration_between,
    fail,
    open_ledger,
    refuse_libcloud_debug,
    who_is_asking,
)
from reconciler.cli.root import cli
from reconciler.durations import format_duration
from reconciler.present.terminal import shown

repo_option = click.option(
    "--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=".",
    show_default=True, help="A checkout of the desired-state repository.",
)  # fmt: skip
path_option = click.option(
    "--path", "subdir", default=None, metavar="SUBDIR",
    help="The desired-state directory inside the repository (default: its top, or "
    "desired-state/ when reconciler.yaml is there).",
)  # fmt: skip
push_option = click.option(
    "--push", is_flag=True,
    help="Push the commit (never forced); a rejected push is fetched and redone.",
)  # fmt: skip


@cli.command()
@click.argument("env", shell_complete=complete_env)
@click.argument("services", nargs=-1)
@click.option("--to", "target", required=True, help="The environment to promote to.")
@click.option("--min-soak", default="30m", show_default=True,
              callback=duration_between(0, 30 * 86400),
              help="How long the source generation must have been active and healthy.")  # fmt: skip
@click.option("--approve-unsoaked", metavar="REASON",
              help="Promote before --min-soak; the reason is recorded.")  # fmt: skip
@click.option("--all", "every_service", is_flag=True,
              help="Every service of ENV that TARGET has too and whose image differs.")  # fmt: skip
@repo_option
@path_option
@push_option
@click.pass_context
def promote(
    ctx: click.Context,
    env: str,
    services: tuple[str, ...],
    target: str,
    min_soak: float,
    approve_unsoaked: str | None,
    every_service: bool,
    repo: Path,
    subdir: str | None,
    push: bool,
) -> None:
    """Commit the image ENV's SERVICE serves (the id its active generation was launched
    with, from the ledger) as the image of SERVICE in --to's environment file: one
    commit, only those `image:` values changed, trailers saying what was promoted."""
    from reconciler.promotion import promote as promotion

    refuse_libcloud_debug()
    if bool(services) == every_service:
        fail("name the services to promote, or give --all (not both)")
    if approve_unsoaked is not None and not approve_unsoaked.strip():
        fail("--approve-unsoaked needs a reason")
    by = who_is_asking()
    request = promotion.PromoteRequest(
        source=env, services=services, target=target, every_service=every_service,
        min_soak=min_soak, approve_unsoaked=approve_unsoaked, now=datetime.now(UTC), by=by,
    )  # fmt: skip
    with domain_errors(), open_ledger(ctx) as ledger:
        repository = promotion.Repository.at(repo, subdir)
        outcome = promotion.commit_changes(
            repository, promotion.decide_promotion(ledger, request),
            subject=promotion.promotion_subject(env),
            trailers=promotion.promotion_trailers(by), push=push,
        )  # fmt: skip
        if outcome.commit is None:
            click.echo(f"nothing to promote: {target} already has the image {env} serves")
            return
        for change in outcome.changes:
            proven = change.source
            assert proven is not None
            approved = (
                f", approved unsoaked: {proven.approved_unsoaked}"
                if proven.approved_unsoaked else ""
            )  # fmt: skip
            click.echo(shown(
                f"{target}/{change.service}: {change.image} from {proven.env} "
                f"g{proven.generation} (soaked {format_duration(proven.soaked)}{approved})"
            ))  # fmt: skip
            ledger.record_event(
                kind="promoted", at=datetime.now(UTC), env=target, service=change.service,
                detail={"from": f"{proven.env}/{proven.service}", "generation": proven.generation,
                        "image": change.image, "source_commit": proven.commit,
                        "soaked_seconds": round(proven.soaked),
                        "approved_unsoaked": proven.approved_unsoaked, "by": by,
                        "commit": outcome.commit, "pushed": outcome.pushed},
            )  # fmt: skip
    click.echo(outcome.message)


@cli.command(name="set-image")
@click.argument("env", shell_complete=complete_env)
@click.argument("service")
@click.argument("image", required=False)
@click.option("--from-packer-manifest", "manifest", metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Take the image id from Packer's manifest post-processor output.")  # fmt: skip
@click.option("--build", metavar="NAME", help="With a manifest: the build to take it from.")
@repo_option
@path_option
@push_option
def set_image(
    env: str,
    service: str,
    image: str | None,
    manifest: Path | None,
    build: str | None,
    repo: Path,
    subdir: str | None,
    push: bool,
) -> None:
    """Commit IMAGE as SERVICE's image in ENV's file (one line changed), for a pipeline
    that just built it: no YAML edited with sed, the push race handled."""
    from reconciler.promotion import promote as promotion
    from reconciler.promotion.packer import artifact_from_manifest

    if (image is None) == (manifest is None):
        fail("give IMAGE or --from-packer-manifest FILE (one of them)")
    if build is not None and manifest is None:
        fail("--build goes with --from-packer-manifest")

    def source(region: str | None) -> tuple[str, str]:
        if manifest is not None:
            return artifact_from_manifest(manifest, region=region, build=build)
        assert image is not None
        return image, ""

    with domain_errors():
        repository = promotion.Repository.at(repo, subdir)
        outcome = promotion.commit_changes(
            repository, promotion.decide_set_image(env, service, source),
            subject=promotion.set_image_subject, trailers=promotion.set_image_trailers,
            push=push,
        )  # fmt: skip
    if outcome.commit is None:
        click.echo(f"nothing to do: {env}/{service} already has that image")
        return
    [change] = outcome.changes
    click.echo(shown(f"{env}/{service}: {change.image}"))
    click.echo(outcome.message)
