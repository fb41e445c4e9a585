"""The distillation terms a config asks for: ``distill.method`` is ``none`` or ``+``-joined terms.

``"letkd"``, ``"fitnet+letkd"`` (the letKD supplement's Table 6: FitNet hints together with the KD layer),
``"kd+fitnet"``, ... Each term keeps its own weight and settings:

* ``kd``: Hinton KD, weighted by ``distill.kd_weight`` (> 0);
* ``fitnet``: the hint MSE, weighted by ``distill.fitnet_weight`` (> 0), between ``distill.hint_block`` and
  ``distill.teacher_hint_block``;
* ``letkd``: the KD layers of ``distill.letkd``: the penultimate one (``penultimate``, weight
  ``penultimate_weight``) and/or the intermediate one (``intermediate``, ``intermediate_weight``). A layer with
  weight 0 is inserted but not supervised (Table 6's "KD layer without supervision").

A positive ``distill.kd_weight`` adds Hinton KD to any method, as before this syntax existed.
"""

from __future__ import annotations

import ml_collections

from jaxdml.errors import ConfigError

TERMS = ("kd", "fitnet", "letkd")  # the terms distill.method may join with "+"; the one list of valid names
METHODS = ("none", *TERMS)  # the single-term spellings (kept for listings)
_EXAMPLE = "e.g. 'letkd', 'fitnet+letkd' or 'none'"


def parse_method(method: str) -> tuple[str, ...]:
    """The terms of ``distill.method`` in their written order (``()`` for ``none``); raises
    :class:`ConfigError` (one line: the problem and the fix) for unknown, repeated or empty terms."""
    text = str(method).strip()
    if text == "none":
        return ()
    terms = tuple(t.strip() for t in text.split("+"))
    if "" in terms:
        raise ConfigError(f"distill.method={method!r} has an empty term; join terms from {', '.join(TERMS)} with "
                          f"'+', {_EXAMPLE}.")
    if "none" in terms:
        raise ConfigError(f"distill.method={method!r}: 'none' cannot be combined with other terms; drop it, "
                          f"{_EXAMPLE}.")
    unknown = [t for t in terms if t not in TERMS]
    if unknown:
        raise ConfigError(f"distill.method={method!r}: unknown term(s) {', '.join(map(repr, unknown))}; join terms "
                          f"from {', '.join(TERMS)} with '+', {_EXAMPLE}.")
    repeated = sorted({t for t in terms if terms.count(t) > 1})
    if repeated:
        raise ConfigError(f"distill.method={method!r} repeats {', '.join(map(repr, repeated))}; name each term "
                          f"once and set its weight instead (distill.kd_weight, distill.fitnet_weight, "
                          f"distill.letkd.*_weight).")
    return terms


def terms_of(d: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The active terms of the ``distill`` section: those of ``method``, plus ``kd`` when ``kd_weight`` > 0."""
    terms = parse_method(d.method)
    return terms if "kd" in terms or d.kd_weight <= 0 else (*terms, "kd")


def has_term(d: ml_collections.ConfigDict, term: str) -> bool:
    return term in terms_of(d)


def letkd_parts(d: ml_collections.ConfigDict) -> dict[str, bool]:
    """Which LeTKD layers are inserted and which are supervised (weight > 0); all False without ``letkd``."""
    on = "letkd" in parse_method(d.method)
    ld = d.letkd
    return {"penultimate": on and ld.penultimate, "intermediate": on and ld.intermediate,
            "supervised_penultimate": on and ld.penultimate and ld.penultimate_weight > 0,
            "supervised_intermediate": on and ld.intermediate and ld.intermediate_weight > 0}


def check_terms(d: ml_collections.ConfigDict) -> None:
    """Refuses a ``distill`` section whose terms cannot run (one line naming the key to set), before any work."""
    terms = parse_method(d.method)
    if "kd" in terms and d.kd_weight <= 0:
        raise ConfigError(f"distill.method={d.method!r} includes 'kd' but distill.kd_weight={d.kd_weight}: set "
                          f"distill.kd_weight > 0 (e.g. 0.9 with distill.ce_weight=0.1) or drop 'kd'.")
    if "fitnet" in terms:
        if d.fitnet_weight <= 0:
            raise ConfigError(f"distill.method={d.method!r} includes 'fitnet' but distill.fitnet_weight="
                              f"{d.fitnet_weight}: set distill.fitnet_weight > 0 (the KD code base uses 100) or "
                              f"drop 'fitnet'.")
        if not (d.hint_block and d.teacher_hint_block):
            raise ConfigError(f"distill.method={d.method!r} includes 'fitnet': set distill.hint_block and "
                              f"distill.teacher_hint_block (e.g. layer2_0) or drop 'fitnet'.")
    if "letkd" in terms:
        ld = d.letkd
        if not (ld.penultimate or ld.intermediate):
            raise ConfigError(f"distill.method={d.method!r} includes 'letkd' but distill.letkd.penultimate and "
                              f"distill.letkd.intermediate are both False: enable one or drop 'letkd'.")
        if ld.intermediate and not (ld.student_block and ld.teacher_block):
            raise ConfigError("distill.letkd.intermediate needs distill.letkd.student_block and "
                              "distill.letkd.teacher_block (e.g. layer3_0); set them or distill.letkd.intermediate="
                              "False.")
        if ld.intermediate and ld.student_block == "final" and ld.penultimate:
            raise ConfigError("distill.letkd.student_block='final' is where the penultimate layer sits; choose "
                              "another block or set distill.letkd.penultimate=False.")
