"""How whether a claim of the paper held at this scale is recorded (docs/method.md §4).

Each experiment decides its own verdict in its module (ess.paper.synthetic.e1, ...), from the
numbers of its table by the rule in the function's docstring, with nothing tuned toward the
paper's answer. A `Verdict` carries the claim, the verdict ("holds", "partly holds (k of n
parts)", "does not hold", "inconclusive (why)" or "undefined (why)") and the evidence it was
decided from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a claim of the paper held at this scale.

    verdict: "holds", "partly holds (k of n parts)", "does not hold", "inconclusive (why)" or
    "undefined (why)"; evidence: the numbers it was decided from.
    """

    claim: str
    verdict: str
    evidence: str

    def sentence(self) -> str:
        """The verdict as caption text."""
        return f"Paper's claim: {self.claim}. At this scale: {self.verdict} ({self.evidence})."


Part = tuple[bool | None, str]  # one part of a claim: held (None: undefined) and its evidence


def combined_verdict(claim: str, parts: Sequence[Part]) -> Verdict:
    """A claim of several parts: "holds" if every part held, "does not hold" if none did,
    "partly holds (k of n parts)" otherwise, "undefined (...)" if any part is undefined."""
    answer = {True: "yes", False: "no", None: "undefined"}
    evidence = "; ".join(f"({i}) {text}: {answer[held]}" for i, (held, text) in enumerate(parts, 1))
    held = [h for h, _ in parts]
    undefined = [str(i) for i, h in enumerate(held, 1) if h is None]
    if undefined:
        verdict = f"undefined (part {', '.join(undefined)})"
    elif all(held):
        verdict = "holds"
    elif not any(held):
        verdict = "does not hold"
    else:
        verdict = f"partly holds ({sum(held)} of {len(held)} parts)"
    return Verdict(claim, verdict, evidence)
