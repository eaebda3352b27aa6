"""`reconciler promote` and `reconciler set-image`: one commit that changes only the
`image:` of some services in one environment file, pushed without force.

Owns: choosing what to write (for promote: the image id the source environment's
serving generation was launched with, judged by `planning.promotion.judge` from the
ledger; for set-image: the id given, or read from Packer's manifest), refusing what
must not be committed (each reason listed, no commit written), the commit message and
its trailers (DESIGN §8), and the push race: a rejected push fetches, makes the same
change again on the remote's new head and retries, a bounded number of times.
Must not: touch the cloud (the daemon applies the commit like any other), force-push,
or commit anything but the one file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Final

import structlog

from reconciler import engine
from reconciler.durations import format_duration
from reconciler.errors import PromotionRefused
from reconciler.ledger import Ledger
from reconciler.ledger.holds import current_freezes, current_pins
from reconciler.model import (
    DesiredState,
    Freeze,
    GenerationState,
    LedgerView,
    Pin,
    ServiceSpec,
)
from reconciler.planning.promotion import Proven, SourceFacts, judge
from reconciler.promotion.checkout import Checkout
from reconciler.promotion.edit import replace_image

log = structlog.get_logger(__name__)

PUSH_ATTEMPTS: Final = 5  # a rejected push is fetched and redone at most this often
DESIRED_SUBDIRS: Final = ("", "desired-state")  # where reconciler.yaml is looked for


@dataclass(frozen=True)
class ImageChange:
    env: str
    service: str
    image: str
    source: Proven | None = None  # promote: what proved it
    note: str = ""  # set-image: where the id came from


@dataclass
class Outcome:
    message: str
    commit: str | None = None  # None: nothing to commit
    pushed: bool = False
    changes: list[ImageChange] = field(default_factory=list)


@dataclass(frozen=True)
class Repository:
    """The checkout and the desired-state directory inside it."""

    checkout: Checkout
    desired_dir: Path

    @classmethod
    def at(cls, repo: Path, subdir: str | None) -> Repository:
        checkout = Checkout(repo)
        candidates = [subdir] if subdir is not None else list(DESIRED_SUBDIRS)
        for candidate in candidates:
            directory = (repo / candidate).resolve() if candidate else repo.resolve()
            if (directory / "reconciler.yaml").is_file():
                return cls(checkout, directory)
        where = " or ".join(str(repo / c) if c else str(repo) for c in candidates)
        raise PromotionRefused([f"no reconciler.yaml in {where} (use --path SUBDIR)"])


# What decides the changes, given the desired state at the head being committed on:
# called again after a rejected push, on the remote's new head.
Decide = Callable[[DesiredState], list[ImageChange]]


def commit_changes(
    repository: Repository,
    decide: Decide,
    *,
    subject: Callable[[list[ImageChange]], str],
    trailers: Callable[[list[ImageChange]], list[str]],
    push: bool,
) -> Outcome:
    """Check the checkout, decide, edit, commit and (with `push`) push; on a rejected
    push, fetch and do it all again on the new head."""
    checkout = repository.checkout
    dirty = checkout.dirty()
    if dirty:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        raise PromotionRefused(
            [f"the checkout {checkout.root} has uncommitted changes ({shown}): commit or "
             "stash them first; a promotion commit carries its own change only"]
        )  # fmt: skip
    branch = checkout.branch()
    remote = checkout.remote(branch) if push else ""
    if push:
        _start_from_remote(checkout, remote, branch)
    for attempt in range(1, PUSH_ATTEMPTS + 1):
        desired = engine.read_desired(repository.desired_dir)
        changes = decide(desired)
        if not changes:
            return Outcome("nothing to commit")
        sha = _write_and_commit(repository, desired, changes, subject, trailers)
        if not push:
            return Outcome(f"committed {sha[:12]}", commit=sha, changes=changes)
        pushed = checkout.push(remote, branch)
        if pushed.pushed:
            return Outcome(
                f"committed {sha[:12]} and pushed it to {remote} {branch}", commit=sha,
                pushed=True, changes=changes,
            )  # fmt: skip
        if not pushed.rejected:
            raise PromotionRefused(
                [f"the push to {remote} {branch} failed ({pushed.detail}); commit {sha[:12]} "
                 "is in the checkout: push it by hand or drop it"]
            )  # fmt: skip
        log.warning("push_rejected", remote=remote, branch=branch, attempt=attempt,
                    detail=pushed.detail)  # fmt: skip
        # The remote moved on between our fetch and our push: make the change again on
        # its new head (the commit dropped is ours alone; the checkout was clean).
        head = checkout.fetch(remote, branch)
        checkout.reset_own_commit(head)
    raise PromotionRefused(
        [f"the push to {remote} {branch} was rejected {PUSH_ATTEMPTS} times (the branch keeps "
         "moving); nothing was pushed, try again"]
    )  # fmt: skip


def _start_from_remote(checkout: Checkout, remote: str, branch: str) -> None:
    """Commit on the remote's head: fast-forward a checkout that is behind; refuse one
    with commits of its own (a push would publish them along with the promotion)."""
    head = checkout.head()
    upstream = checkout.fetch(remote, branch)
    if head == upstream:
        return
    if checkout.is_ancestor(head, upstream):
        checkout.fast_forward(upstream)
        return
    raise PromotionRefused(
        [f"the checkout's {branch} has commits that are not on {remote} (or has diverged "
         f"from it): push or drop them first; --push publishes the promotion commit only"]
    )  # fmt: skip


def _write_and_commit(
    repository: Repository,
    desired: DesiredState,
    changes: list[ImageChange],
    subject: Callable[[list[ImageChange]], str],
    trailers: Callable[[list[ImageChange]], list[str]],
) -> str:
    files = {change.env: _environment_file(repository, change.env) for change in changes}
    originals = {env: path.read_text(encoding="utf-8") for env, path in files.items()}
    edited = dict(originals)
    for change in changes:
        display = str(files[change.env].relative_to(repository.checkout.root))
        edited[change.env] = replace_image(
            edited[change.env], service=change.service, image=change.image, display=display
        )
    try:
        for env, text in edited.items():
            files[env].write_text(text, encoding="utf-8")
        _check_result(repository, desired, changes)
        message = subject(changes) + "\n\n" + "\n".join(trailers(changes)) + "\n"
        [env] = files  # one environment per commit (the CLI takes one target)
        return repository.checkout.commit(files[env], message)
    except BaseException:
        # Nothing half-done stays in the operator's checkout.
        for env, text in originals.items():
            files[env].write_text(text, encoding="utf-8")
        raise


def _check_result(repository: Repository, before: DesiredState, changes: list[ImageChange]) -> None:
    """The edited desired state is valid, and differs from before only in those images."""
    after = engine.read_desired(repository.desired_dir)
    expected = {(c.env, c.service): c.image for c in changes}
    for spec in after.services():
        old = before.service(spec.env, spec.name)
        image = expected.get((spec.env, spec.name))
        if image is not None and spec.image != image:
            raise PromotionRefused([f"{spec.env}/{spec.name}: the edit did not take"])
        if image is None and (old is None or old.fingerprint != spec.fingerprint):
            raise PromotionRefused([f"{spec.env}/{spec.name} would change too; not committed"])


def _environment_file(repository: Repository, env: str) -> Path:
    path = repository.desired_dir / "environments" / f"{env}.yaml"
    if not path.is_file():
        raise PromotionRefused([f"no environment file for {env} ({path})"])
    return path


# ---------------------------------------------------------------- promote


@dataclass(frozen=True)
class PromoteRequest:
    source: str
    services: Sequence[str]
    target: str
    every_service: bool  # --all
    min_soak: float
    approve_unsoaked: str | None
    now: datetime
    by: str


def decide_promotion(ledger: Ledger, request: PromoteRequest) -> Decide:
    def decide(desired: DesiredState) -> list[ImageChange]:
        return promotion_changes(ledger, desired, request)

    return decide


def promotion_changes(
    ledger: Ledger, desired: DesiredState, request: PromoteRequest
) -> list[ImageChange]:
    """The changes to commit, or PromotionRefused with every reason."""
    envs = {e.name: e for e in desired.environments}
    problems = [
        f"unknown environment {name!r} (the desired state has {', '.join(sorted(envs)) or 'none'})"
        for name in dict.fromkeys((request.source, request.target)) if name not in envs
    ]  # fmt: skip
    if request.source == request.target:
        problems.append("the source and target environments are the same")
    if problems:
        raise PromotionRefused(problems)
    names = list(request.services)
    if request.every_service:
        names = [s.name for s in envs[request.source].services
                 if desired.service(request.target, s.name) is not None]  # fmt: skip
    if not names:
        raise PromotionRefused([f"{request.source} and {request.target} have no service in common"])
    pins = current_pins(ledger, desired)
    freezes = current_freezes(ledger, desired)
    view = ledger.view()  # read once for every service judged
    changes: list[ImageChange] = []
    for name in dict.fromkeys(names):
        source = desired.service(request.source, name)
        target = desired.service(request.target, name)
        if source is None or target is None:
            missing = request.source if source is None else request.target
            problems.append(f"{missing} has no service {name!r}")
            continue
        problems += _target_problems(desired, source, target, freezes)
        verdict = judge(
            _source_facts(ledger, view, source, pins, freezes), now=request.now,
            min_soak=request.min_soak, approve_unsoaked=request.approve_unsoaked,
        )  # fmt: skip
        if isinstance(verdict, str):
            problems.append(verdict)
            continue
        if target.image == verdict.image:
            continue  # already there
        commit = _generation_commit(ledger, source.env, name, verdict.generation)
        proven = replace(verdict, commit=commit)
        changes.append(ImageChange(request.target, name, verdict.image, source=proven))
    if problems:
        raise PromotionRefused(problems)
    return changes


def _generation_commit(ledger: Ledger, env: str, service: str, number: int) -> str | None:
    for row in ledger.generation_rows(env=env, service=service):
        if row["number"] == number:
            return row.get("commit")
    return None


def _target_problems(
    desired: DesiredState,
    source: ServiceSpec,
    target: ServiceSpec,
    freezes: Mapping[tuple[str, str], Freeze],
) -> list[str]:
    problems: list[str] = []
    if target.frozen:
        problems.append(f"{target.env}/{target.name} is frozen in the desired state")
    elif (target.env, target.name) in freezes:
        problems.append(f"{target.env}/{target.name} is frozen by a guard; "
                        f"`reconciler unfreeze {target.env} {target.name}` first")  # fmt: skip
    here, there = desired.providers[source.provider], desired.providers[target.provider]
    if (here.driver, here.region, here.endpoint) != (there.driver, there.region, there.endpoint):
        source_region = here.region or "its default region"
        target_region = there.region or "its default region"
        problems.append(
            f"{source.env}/{source.name} runs on provider {here.name} ({source_region}) and "
            f"{target.env}/{target.name} on {there.name} ({target_region}): an image id "
            "belongs to one cloud and region; copy the image there and use `reconciler set-image`"
        )
    return problems


def _source_facts(
    ledger: Ledger,
    view: LedgerView,
    spec: ServiceSpec,
    pins: Mapping[tuple[str, str], Pin],
    freezes: Mapping[tuple[str, str], Freeze],
) -> SourceFacts:
    generations = view.generations_of(spec.env, spec.name)
    active = next((g for g in generations if g.state is GenerationState.ACTIVE), None)
    running = 0
    replaced_at = None
    if active is not None:
        running = sum(
            1 for row in ledger.instance_rows(env=spec.env, service=spec.name,
                                              generation=active.number, live_only=True)
            if row["state"] == "running"
        )  # fmt: skip
        replaced = [
            e["at"] for e in ledger.event_rows(kind="instance_replaced", env=spec.env,
                                               service=spec.name)
            if e["generation"] == active.number
        ]  # fmt: skip
        replaced_at = max((datetime.fromisoformat(t) for t in replaced), default=None)
    pin = pins.get((spec.env, spec.name))
    frozen = None
    if spec.frozen:
        frozen = "frozen: true in the desired state"
    elif (spec.env, spec.name) in freezes:
        frozen = "by a guard"
    return SourceFacts(
        env=spec.env, service=spec.name, generations=generations, running=running,
        replaced_at=replaced_at, pinned_to=pin.generation if pin else None, frozen=frozen,
        fingerprint=spec.fingerprint,
    )  # fmt: skip


def promotion_subject(source: str) -> Callable[[list[ImageChange]], str]:
    def subject(changes: list[ImageChange]) -> str:
        target = changes[0].env
        if len(changes) == 1:
            change = changes[0]
            return f"Promote {change.service} to {target}: {change.image} from {source}"
        names = ", ".join(c.service for c in changes)
        return f"Promote {names} to {target} from {source}"

    return subject


def promotion_trailers(by: str) -> Callable[[list[ImageChange]], list[str]]:
    """DESIGN §8: Promoted-From, Promoted-Image, Promoted-Commit, Soaked, and
    Approved-Unsoaked when the soak was overridden; one group per service."""

    def trailers(changes: list[ImageChange]) -> list[str]:
        lines: list[str] = []
        for change in changes:
            proven = change.source
            assert proven is not None
            lines.append(f"Promoted-From: {proven.env}/{proven.service} g{proven.generation}")
            lines.append(f"Promoted-Image: {proven.image}")
            if proven.commit:
                lines.append(f"Promoted-Commit: {proven.commit}")
            lines.append(f"Soaked: {format_duration(proven.soaked)}")
            if proven.approved_unsoaked is not None:
                reason = " ".join(proven.approved_unsoaked.split())
                lines.append(f"Approved-Unsoaked: {reason} (by {by})")
        return lines

    return trailers


# ---------------------------------------------------------------- set-image


# The image to set and where it came from, given the target's provider region.
ImageSource = Callable[[str | None], tuple[str, str]]


def decide_set_image(env: str, service: str, source: ImageSource) -> Decide:
    def decide(desired: DesiredState) -> list[ImageChange]:
        if env not in {e.name for e in desired.environments}:
            names = ", ".join(sorted(e.name for e in desired.environments)) or "none"
            raise PromotionRefused([f"unknown environment {env!r} (the desired state has {names})"])
        spec = desired.service(env, service)
        if spec is None:
            raise PromotionRefused([f"{env} has no service {service!r}"])
        if spec.frozen:
            raise PromotionRefused([f"{env}/{service} is frozen in the desired state"])
        image, note = source(desired.providers[spec.provider].region)
        if spec.image == image:
            return []
        return [ImageChange(env, service, image, note=note)]

    return decide


def set_image_subject(changes: list[ImageChange]) -> str:
    [change] = changes
    return f"Set {change.env}/{change.service} image to {change.image}"


def set_image_trailers(changes: list[ImageChange]) -> list[str]:
    [change] = changes
    lines = [f"Image-Set: {change.env}/{change.service} {change.image}"]
    if change.note:
        lines.append(f"Image-Source: {change.note}")
    return lines

