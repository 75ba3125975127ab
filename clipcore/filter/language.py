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


def detect_languages(texts: list[str], candidates: tuple[str, ...] = ()) -> list[str | None]:
    """ISO 639-1 code (lower case) per text, None where lingua cannot decide. Each distinct text is scored once."""
    unique = sorted(set(texts))
    found = detector(tuple(candidates)).detect_languages_in_parallel_of(unique)
    code = {t: (lang.iso_code_639_1.name.lower() if lang is not None else None) for t, lang in zip(unique, found,
                                                                                                 strict=True)}
    return [code[t] for t in texts]
