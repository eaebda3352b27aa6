"""Bookkeeping: the actions that change only the ledger.

Owns: retiring a generation, adopting one the ledger never recorded (its rows priced
and fingerprinted as a launch of ours would be) and the recorded count after scaling
inside the active generation. Must not: call a provider other than to price an
instance, or touch traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.apply.run import ApplyRun
from reconciler.model import Action, GenerationState, Reason
from reconciler.providers.base import instance_price


@dataclass(kw_only=True)
class Bookkeeper:
    run: ApplyRun

    def retire(self, action: Action) -> None:
        run = self.run
        reason = action.reason.value + (f" ({action.detail})" if action.detail else "")
        run.ledger.set_generation_state(
            action.env,
            action.service,
            action.generation,
            state=GenerationState.DESTROYED,
            at=run.now(),
            reason=reason,
        )

    def adopt(self, action: Action) -> None:
        run = self.run
        members = [
            i
            for i in run.observed
            if (i.env, i.service, i.generation) == (action.env, action.service, action.generation)
            and i.alive
        ]
        sample = members[0]
        at = run.now()
        state = action.adopt_as or GenerationState.STANDBY
        run.ledger.record_generation(
            env=action.env,
            service=action.service,
            number=action.generation,
            provider=sample.provider,
            fingerprint=sample.fingerprint or "",
            image=sample.image,
            size=sample.size,
            count=len(members),
            commit=None,
            state=state,
            at=at,
            reason=Reason.UNRECORDED_GENERATION.value,
        )
        run.ledger.set_generation_state(
            action.env, action.service, action.generation, state=state, at=at
        )
        # What the tamper check compares later listings with, as for a launch of ours.
        run.ledger.set_generation_fields(
            action.env, action.service, action.generation, image_id=sample.image
        )
        spec = run.desired.service(action.env, action.service)
        for instance in members:
            # Priced as a launch would be, so adopted instances do not cost nothing.
            price = instance_price(
                spec.price_per_hour if spec else None,
                run.providers.get(instance.provider), instance.size,
            )  # fmt: skip
            run.ledger.record_instance(
                id=instance.id,
                provider=instance.provider,
                env=action.env,
                service=action.service,
                generation=action.generation,
                slot=instance.slot,
                name=instance.name,
                image=instance.image,
                size=instance.size,
                price_per_hour=price,
                state=instance.state.value,
                created_at=instance.launched_at or at,
                op=instance.op,
            )

    def record_count(self, actions: list[Action]) -> None:
        """Scaling inside the active generation changes its recorded count."""
        scaled = [a for a in actions if a.reason in (Reason.SURPLUS, Reason.DEFICIT)]
        spec = self.run.desired.service(actions[0].env, actions[0].service)
        if scaled and spec is not None:
            self.run.ledger.set_generation_fields(
                spec.env, spec.name, scaled[0].generation, count=spec.count
            )
