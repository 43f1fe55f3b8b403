"""Porter stemming (M. F. Porter 1980, "An algorithm for suffix stripping", Program 14(3)) as
the retrieval-head reference code applies it: ``rouge_score.rouge_scorer.RougeScorer(...,
use_stemmer=True)`` stems every word longer than 3 characters with NLTK's ``PorterStemmer`` in
its default ``NLTK_EXTENSIONS`` mode. That mode is Porter's published algorithm plus Porter's
own later corrections (``bli -> ble`` instead of ``abli -> able``, ``logi -> log``) and NLTK's
additions, each marked where it occurs below: a few irregular forms, words of one or two letters
left alone, ``ies``/``ied`` of four-letter words kept as ``ie``, ``y -> i`` only after a
consonant, ``alli``/``fulli``, and a vowel-consonant pair counting as ``*o``.

Written from the published algorithm, without a dependency (neither ``rouge_score`` nor ``nltk``
is a workbench dependency); ``tests/unit/test_reference_settings.py`` checks it on hand-worked
words and, where ``nltk`` is installed, against NLTK on a vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

_VOWELS = frozenset("aeiou")

#: NLTK's irregular forms (``PorterStemmer.pool``): word -> stem, no rule applied.
_IRREGULAR = {
    "skies": "sky",
    "sky": "sky",
    "dying": "die",
    "lying": "lie",
    "tying": "tie",
    "news": "news",
    "innings": "inning",
    "inning": "inning",
    "outings": "outing",
    "outing": "outing",
    "cannings": "canning",
    "canning": "canning",
    "howe": "howe",
    "proceed": "proceed",
    "exceed": "exceed",
    "succeed": "succeed",
}

Condition = Callable[[str], bool] | None
Rule = tuple[str, str, Condition]


def _consonant(word: str, i: int) -> bool:
    """Porter's consonant: not a, e, i, o, u, and not a ``y`` preceded by a consonant."""
    if word[i] in _VOWELS:
        return False
    if word[i] == "y":
        return i == 0 or not _consonant(word, i - 1)
    return True


def measure(stem: str) -> int:
    """Porter's ``m``: the number of vowel-consonant sequences in ``[C](VC)^m[V]``."""
    forms = "".join("c" if _consonant(stem, i) else "v" for i in range(len(stem)))
    return forms.count("vc")


def _has_vowel(stem: str) -> bool:
    return any(not _consonant(stem, i) for i in range(len(stem)))


def _double_consonant(word: str) -> bool:
    return len(word) >= 2 and word[-1] == word[-2] and _consonant(word, len(word) - 1)


def _cvc(word: str) -> bool:
    """Porter's ``*o``: consonant-vowel-consonant at the end, the last not w, x or y; NLTK
    extension: a two-letter word vowel-consonant counts too."""
    n = len(word)
    if n >= 3:
        return (
            _consonant(word, n - 3)
            and not _consonant(word, n - 2)
            and _consonant(word, n - 1)
            and word[-1] not in "wxy"
        )
    return n == 2 and not _consonant(word, 0) and _consonant(word, 1)


def _m_above(k: int) -> Callable[[str], bool]:
    return lambda stem: measure(stem) > k


def _apply(word: str, rules: list[Rule]) -> str:
    """The first rule whose suffix ends ``word`` decides: replaced when its condition holds on
    the stem, else the word is returned unchanged (no later rule is tried). Suffix ``*d``:
    a double consonant, the stem being the word without both letters."""
    for suffix, replacement, condition in rules:
        if suffix == "*d":
            if not _double_consonant(word):
                continue
            stem = word[:-2]
        elif word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
        else:
            continue
        return stem + replacement if condition is None or condition(stem) else word
    return word


def _step1a(word: str) -> str:
    if word.endswith("ies") and len(word) == 4:  # NLTK: "ties" -> "tie"
        return word[:-1]
    return _apply(
        word, [("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)]
    )


def _step1b(word: str) -> str:
    if word.endswith("ied"):  # NLTK: "tied" -> "tie", "cried" -> "cri"
        return word[:-1] if len(word) == 4 else word[:-3] + "i"
    if word.endswith("eed"):
        return word[:-1] if measure(word[:-3]) > 0 else word
    for suffix in ("ed", "ing"):
        if word.endswith(suffix) and _has_vowel(word[: -len(suffix)]):
            stem = word[: -len(suffix)]
            break
    else:
        return word
    return _apply(
        stem,
        [
            ("at", "ate", None),
            ("bl", "ble", None),
            ("iz", "ize", None),
            ("*d", stem[-1], lambda _s: stem[-1] not in "lsz"),
            ("", "e", lambda s: measure(s) == 1 and _cvc(s)),
        ],
    )


def _step1c(word: str) -> str:
    # NLTK: y -> i only after a consonant that is not the word's first letter
    return _apply(word, [("y", "i", lambda s: len(s) > 1 and _consonant(s, len(s) - 1))])


def _step2(word: str) -> str:
    m0 = _m_above(0)
    if word.endswith("alli") and m0(word[:-4]):  # NLTK: alli -> al, then step 2 again
        return _step2(word[:-2])
    rules: list[Rule] = [
        (suffix, replacement, m0)
        for suffix, replacement in (
            ("ational", "ate"),
            ("tional", "tion"),
            ("enci", "ence"),
            ("anci", "ance"),
            ("izer", "ize"),
            ("bli", "ble"),  # Porter's correction of abli -> able
            ("alli", "al"),
            ("entli", "ent"),
            ("eli", "e"),
            ("ousli", "ous"),
            ("ization", "ize"),
            ("ation", "ate"),
            ("ator", "ate"),
            ("alism", "al"),
            ("iveness", "ive"),
            ("fulness", "ful"),
            ("ousness", "ous"),
            ("aliti", "al"),
            ("iviti", "ive"),
            ("biliti", "ble"),
            ("fulli", "ful"),  # NLTK
        )
    ]
    rules.append(("logi", "log", lambda _s: m0(word[:-3])))  # Porter's correction
    return _apply(word, rules)


def _step3(word: str) -> str:
    m0 = _m_above(0)
    pairs = (
        ("icate", "ic"),
        ("ative", ""),
        ("alize", "al"),
        ("iciti", "ic"),
        ("ical", "ic"),
        ("ful", ""),
        ("ness", ""),
    )
    return _apply(word, [(s, r, m0) for s, r in pairs])


def _step4(word: str) -> str:
    m1 = _m_above(1)
    suffixes = ("al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent")
    rules: list[Rule] = [(s, "", m1) for s in suffixes]
    rules.append(("ion", "", lambda s: m1(s) and s[-1:] in ("s", "t")))
    rules += [(s, "", m1) for s in ("ou", "ism", "ate", "iti", "ous", "ive", "ize")]
    return _apply(word, rules)


def _step5(word: str) -> str:
    if word.endswith("e"):
        stem = word[:-1]
        m = measure(stem)
        if m > 1 or (m == 1 and not _cvc(stem)):
            word = stem
    if word.endswith("ll") and measure(word[:-1]) > 1:
        word = word[:-1]
    return word


def porter_stem(word: str) -> str:
    """The Porter stem of one lowercase word (NLTK ``PorterStemmer()``, ``NLTK_EXTENSIONS``):
    ``"falcons" -> "falcon"``, ``"generalization" -> "gener"``, ``"ponies" -> "poni"``."""
    word = word.lower()
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 2:  # NLTK: too short to stem
        return word
    for step in (_step1a, _step1b, _step1c, _step2, _step3, _step4, _step5):
        word = step(word)
    return word


def rouge_stem(word: str) -> str:
    """A word as rouge_score's tokenizer leaves it with ``use_stemmer=True``: Porter-stemmed
    when longer than 3 characters, else unchanged."""
    return porter_stem(word) if len(word) > 3 else word


__all__ = ["measure", "porter_stem", "rouge_stem"]
