"""Caption language identification with lingua (its models ship inside the wheel: works offline)."""

from __future__ import annotations

from functools import lru_cache

from lingua import IsoCode639_1, Language, LanguageDetector, LanguageDetectorBuilder


@lru_cache(maxsize=4)
def detector(candidates: tuple[str, ...]) -> LanguageDetector:
    """A lingua detector choosing among `candidates` (ISO 639-1 codes); empty means all 75 languages.

    Short captions are easily mistaken for a rare language; restricting the candidates to the languages a
    corpus plausibly holds is lingua's own advice for short texts.
    """
    if not candidates:
        return LanguageDetectorBuilder.from_all_languages().build()
    try:
        languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in candidates]
    except AttributeError as err:
        raise ValueError(f"unknown ISO 639-1 code in filter.language_candidates {list(candidates)}") from err
    return LanguageDetectorBuilder.from_languages(*languages).build()


CHUNK = 8192
"""Distinct captions scored per call: lingua returns a value per candidate language for each (18 objects a caption by
default), so scoring a shard's captions all at once cost 146 MB more at 160,000 captions."""


def code(language: Language) -> str:
    """ISO 639-1 code, lower case."""
    return language.iso_code_639_1.name.lower()


def disallowed_languages(texts: list[str], allowed: tuple[str, ...], candidates: tuple[str, ...] = (),
                         min_ratio: float = 0.35) -> list[str | None]:
    """Per text, the language it is judged to be written in when that language is not `allowed`, else None.

    A text is judged to be in another language only when lingua's confidence in the best allowed language is below
    `min_ratio` times its confidence in the language it ranks first. Three-word captions often look like several
    languages at once ("a red sandal": Indonesian 0.15, English 0.10; "sofa bed grey": Turkish 0.20, English 0.18),
    while a caption really written in another language leaves the allowed ones far behind ("una camiseta negra de
    algodón": Spanish 0.81, English 0.017). `min_ratio` 1 rejects whenever the first language is not allowed, 0 never.
    Each distinct text is scored once.
    """
    unique = sorted(set(texts))
    allowed_set = set(allowed)
    scorer = detector(tuple(candidates))
    verdict: dict[str, str | None] = {}
    for start in range(0, len(unique), CHUNK):  # lingua's values, one per candidate, for a chunk at a time
        chunk = unique[start:start + CHUNK]
        for text, values in zip(chunk, scorer.compute_language_confidence_values_in_parallel(chunk), strict=True):
            top = values[0] if values and values[0].value > 0 else None  # all zero: lingua cannot place it
            best_allowed = max((v.value for v in values if code(v.language) in allowed_set), default=0.0)
            wrong = top is not None and code(top.language) not in allowed_set and best_allowed < min_ratio * top.value
            verdict[text] = code(top.language) if wrong else None
    return [verdict[t] for t in texts]
