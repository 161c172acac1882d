"""Word tokenizers, registered by name for the ``tokenizer`` key of a model input.

Each is a class whose constructor takes the config parameters and whose instances are called on
one string: ``tokenizer(text) -> list[str]``. All are built on NLTK tokenizers that need no data
package (NLTK's ``word_tokenize`` needs the punkt models, which cannot be assumed present).
Instances are picklable (they are rebuilt from their parameters), so they can travel to
data-loader worker processes.

Speed: NLTK (3.9.3+) runs every regular expression through ``nltk.redos``, the third-party
``regex`` engine with a wall-clock timeout per call, which makes the Treebank and Toktok
tokenizers 2-2.5 times slower than with the standard ``re`` module. Their patterns are fixed,
written by NLTK and safe, so ``treebank`` and ``toktok`` here use NLTK's own tokenizer classes with
those class-level patterns recompiled by ``re`` (the tests check the output is identical). A
pattern the user supplies (``regexp``) keeps NLTK's ReDoS protection.
"""
from __future__ import annotations

import functools
import re

from blocks.errors import ConfigError
from blocks.registry import register_tokenizer

# NLTK is imported when a tokenizer is first built: importing it takes about a second (it pulls
# in scipy), which commands that tokenize nothing (``blocks list``, ``--help``) should not pay.


@functools.cache
def _timed_pattern_flags() -> tuple:
    """(nltk.redos.TimedPattern, ((regex flag, re flag), ...)), or (None, ()) before NLTK 3.9.3."""
    try:
        import regex
        from nltk import redos
        # flags of the ``regex`` engine and their ``re`` equivalents (ASCII differs: 128 vs 256)
        return redos.TimedPattern, ((regex.IGNORECASE, re.IGNORECASE), (regex.MULTILINE, re.MULTILINE),
                                    (regex.DOTALL, re.DOTALL), (regex.VERBOSE, re.VERBOSE))
    except (ImportError, AttributeError):  # NLTK before 3.9.3 compiles its patterns with re
        return None, ()


def _plain_patterns(value):
    """``value`` with every ``nltk.redos.TimedPattern`` in it (inside tuples and lists)
    recompiled by ``re``; ``value`` itself when there is none."""
    timed, flag_pairs = _timed_pattern_flags()
    if timed is not None and isinstance(value, timed):
        from nltk import redos

        flags = 0
        for theirs, ours in flag_pairs:
            if value.flags & theirs:
                flags |= ours
        return re.compile(redos.source_of(value), flags)
    if isinstance(value, (tuple, list)):
        items = [_plain_patterns(item) for item in value]
        if any(new is not old for new, old in zip(items, value)):
            return type(value)(items)
    return value


def _with_plain_patterns(cls: type) -> type:
    """A subclass of an NLTK tokenizer whose class-level patterns are ``re`` patterns."""
    replaced = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if not name.startswith("__"):
                new = _plain_patterns(value)
                if new is not value:
                    replaced[name] = new
    replaced["__module__"] = __name__
    return type(f"Plain{cls.__name__}", (cls,), replaced)


@functools.cache
def _nltk_class(name: str) -> type:
    """The NLTK tokenizer class ``name``; Treebank and Toktok with their patterns compiled by ``re``."""
    import nltk.tokenize

    cls = getattr(nltk.tokenize, name)
    return _with_plain_patterns(cls) if name in ("TreebankWordTokenizer", "ToktokTokenizer") else cls


def _rebuild(cls: type, params: dict) -> "Tokenizer":
    return cls(**params)


class Tokenizer:
    """Base of the registered tokenizers: ``tokenizer(text)`` returns the list of tokens.

    The public attributes of an instance are its constructor parameters.
    """

    def __call__(self, text: str) -> list[str]:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __reduce__(self):
        return _rebuild, (type(self), self.params())

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.params().items()))))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({params})"


@register_tokenizer("treebank")
class Treebank(Tokenizer):
    """Penn Treebank conventions: splits punctuation and contractions ("don't" -> "do", "n't").

    Double quotes become ``` `` ``` and ``''`` as in the Treebank.
    """

    def __init__(self):
        self._tokenizer = _nltk_class("TreebankWordTokenizer")()

    def __call__(self, text: str) -> list[str]:
        return self._tokenizer.tokenize(text)


@register_tokenizer("wordpunct")
class WordPunct(Tokenizer):
    """Runs of word characters and runs of punctuation (``\\w+|[^\\w\\s]+``)."""

    def __init__(self):
        self._tokenizer = _nltk_class("WordPunctTokenizer")()

    def __call__(self, text: str) -> list[str]:
        return self._tokenizer.tokenize(text)


@register_tokenizer("toktok")
class Toktok(Tokenizer):
    """Toktok: a fast rule-based tokenizer for many languages (one sentence per call)."""

    def __init__(self):
        self._tokenizer = _nltk_class("ToktokTokenizer")()

    def __call__(self, text: str) -> list[str]:
        return self._tokenizer.tokenize(text)


@register_tokenizer("tweet")
class Tweet(Tokenizer):
    """Social-media text: keeps emoticons, hashtags, @handles and URLs whole.

    Args:
        preserve_case: keep the case (False lowercases everything except emoticons).
        reduce_len: shorten runs of 3 or more repeated characters to 3 ("waaaaay" -> "waaay").
    """

    def __init__(self, preserve_case: bool = True, reduce_len: bool = False):
        self.preserve_case, self.reduce_len = preserve_case, reduce_len
        self._tokenizer = _nltk_class("TweetTokenizer")(preserve_case=preserve_case, reduce_len=reduce_len)

    def __call__(self, text: str) -> list[str]:
        return self._tokenizer.tokenize(text)


@register_tokenizer("regexp")
class Regexp(Tokenizer):
    """Tokens matched by a regular expression (Python ``re`` syntax); empty tokens are dropped.

    Args:
        pattern: regular expression for a token (or, with gaps, for the text between tokens).
        gaps: the pattern matches the separators between tokens instead of the tokens.
    """

    def __init__(self, pattern: str = r"\w+|[^\w\s]+", gaps: bool = False):
        self.pattern, self.gaps = pattern, gaps
        self._tokenizer = _nltk_class("RegexpTokenizer")(pattern, gaps=gaps, discard_empty=True)
        try:
            self._tokenizer.tokenize("")  # compiles the pattern (NLTK does it on first use)
        except re.error as error:  # nltk.redos.error is a re.error
            raise ConfigError(f"invalid regular expression {pattern!r}: {error}") from None

    def __call__(self, text: str) -> list[str]:
        return self._tokenizer.tokenize(text)


@register_tokenizer("whitespace")
class Whitespace(Tokenizer):
    """Split on runs of whitespace (``str.split``): for text that is already tokenized."""

    def __init__(self):
        pass

    def __call__(self, text: str) -> list[str]:
        return text.split()
