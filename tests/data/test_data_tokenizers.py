"""The registered tokenizers."""
from __future__ import annotations

import pickle

import pytest

import blocks.data  # noqa: F401  (registers the tokenizers)
from blocks.errors import ConfigError
from blocks.registry import TOKENIZERS

NAMES = ["regexp", "toktok", "treebank", "tweet", "whitespace", "wordpunct"]


def build(name: str, **params):
    return TOKENIZERS.build(name, params=params)


def test_all_registered_with_descriptions():
    assert set(NAMES) <= set(TOKENIZERS.names())
    for name in NAMES:
        assert TOKENIZERS.describe(name), name
        for param in TOKENIZERS.parameters(name):
            assert param.doc, f"{name}.{param.name} has no description"
        TOKENIZERS.schema(name, key="type")  # expressible in a config


def test_parameters():
    tweet = {p.name: p.default for p in TOKENIZERS.parameters("tweet")}
    assert tweet == {"preserve_case": True, "reduce_len": False}
    regexp = {p.name: p.default for p in TOKENIZERS.parameters("regexp")}
    assert regexp == {"pattern": r"\w+|[^\w\s]+", "gaps": False}
    assert TOKENIZERS.parameters("treebank") == []


def test_treebank():
    assert build("treebank")("They don't like it.") == ["They", "do", "n't", "like", "it", "."]


def test_wordpunct():
    assert build("wordpunct")("don't stop!!") == ["don", "'", "t", "stop", "!!"]


def test_toktok():
    assert build("toktok")("Hello, world.") == ["Hello", ",", "world", "."]


def test_tweet():
    text = "@bob Sooooo COOL :-) #nlp"
    assert build("tweet")(text) == ["@bob", "Sooooo", "COOL", ":-)", "#nlp"]
    assert build("tweet", preserve_case=False, reduce_len=True)(text) == ["@bob", "sooo", "cool", ":-)", "#nlp"]


def test_regexp():
    assert build("regexp")("a-b, c") == ["a", "-", "b", ",", "c"]
    assert build("regexp", pattern=r"\s*,\s*", gaps=True)("x , y,z,") == ["x", "y", "z"]
    with pytest.raises(ConfigError, match="invalid regular expression"):
        build("regexp", pattern="(")


def test_whitespace():
    assert build("whitespace")("  it 's\tfine \n") == ["it", "'s", "fine"]


@pytest.mark.parametrize("name", NAMES)
def test_empty_text_and_pickle(name):
    tokenizer = build(name)
    assert tokenizer("") == []
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert copy("a b.") == tokenizer("a b.")


SAMPLES = [
    'He said "hi" (and) [x] {y} <z> -- ok... don\'t can\'t gonna wanna \'tis',
    "\u00a0nbsp\ttab | pipe & amp; 3,000 1,2 ,, -- ... \u2018q\u2019 \u201cdq\u201d \u00abg\u00bb end.'\"",
    "http://a.b/c?d :x x: $5.99 100% \u00a3 \u20ac a--b 'quoted' ``tick'' I'm we'll you're it's",
    "Der Mann hat's gemacht \u2013 gestern \u2014 \u201eheute\u201c.  ",
    "Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\nThanks.",
    "hide new secretions from the parental units ", "it 's a charming and often affecting journey . ",
    "", "   ", "!?;:@#$%", "(((a)))",
]


@pytest.mark.parametrize("name, reference", [("treebank", "TreebankWordTokenizer"),
                                             ("toktok", "ToktokTokenizer")])
def test_plain_re_patterns_match_nltk(name, reference):
    import nltk.tokenize

    ours, theirs = build(name), getattr(nltk.tokenize, reference)()
    for text in SAMPLES:
        assert ours(text) == theirs.tokenize(text), text


def test_equality_and_repr():
    assert build("tweet", reduce_len=True) == build("tweet", reduce_len=True)
    assert build("tweet") != build("tweet", reduce_len=True)
    assert repr(build("regexp", gaps=True)) == r"Regexp(pattern='\\w+|[^\\w\\s]+', gaps=True)"
