"""Caption language identification with lingua (its models ship inside the wheel: works offline)."""

from __future__ import annotations

from functools import lru_cache

from lingua import LanguageDetector, LanguageDetectorBuilder


@lru_cache(maxsize=1)
def detector() -> LanguageDetector:
    return LanguageDetectorBuilder.from_all_languages().build()


def detect_languages(texts: list[str]) -> list[str | None]:
    """ISO 639-1 code (lower case) per text, None where lingua cannot decide. Each distinct text is scored once."""
    unique = sorted(set(texts))
    found = detector().detect_languages_in_parallel_of(unique)
    code = {t: (lang.iso_code_639_1.name.lower() if lang is not None else None) for t, lang in zip(unique, found,
                                                                                                 strict=True)}
    return [code[t] for t in texts]
