"""Subword tokenizers: training, special ids, lossless detokenization, save and load."""
from __future__ import annotations

import json

import pytest

from blocks.data.parallel_reader import read_parallel_files
from blocks.data.subword import (BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID, SubwordTokenizer,
                                 SubwordVocabularies, train_subword)
from blocks.errors import CheckpointError, ConfigError

ENGLISH = ["A man in a blue shirt is standing on a ladder.", "Two dogs play in the snow.",
           "A woman, wearing a red hat, sells fruit at the market!", "Children are running on the beach.",
           "A group of people stand outside a building.", "The dog jumps over the fence."] * 20
GERMAN = ["Ein Mann in einem blauen Hemd steht auf einer Leiter.", "Zwei Hunde spielen im Schnee.",
          "Eine Frau mit rotem Hut verkauft Obst auf dem Markt!", "Kinder laufen am Strand.",
          "Eine Gruppe von Menschen steht vor einem Gebäude.", "Der Hund springt über den Zaun."] * 20


@pytest.mark.parametrize("model", ["bpe", "unigram"])
def test_round_trip_and_special_ids(model):
    tokenizer = train_subword(ENGLISH, model, vocab_size=120)
    assert [tokenizer.tokenizer.id_to_token(i) for i in range(4)] == list(SPECIAL_TOKENS)
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert 4 < tokenizer.vocab_size <= 120
    for sentence in ENGLISH[:6]:
        ids = tokenizer.encode(sentence, bos=True, eos=True)
        assert ids[0] == BOS_ID and ids[-1] == EOS_ID and UNK_ID not in ids and PAD_ID not in ids
        assert tokenizer.decode(ids) == sentence  # plain detokenized text, spaces and punctuation as given
    # unseen words are cut into pieces; whitespace runs come back as single spaces
    assert tokenizer.decode(tokenizer.encode("  A  dog   stands outside. ")) == "A dog stands outside."


def test_decode_stops_at_eos_and_drops_specials():
    tokenizer = train_subword(ENGLISH, "bpe", vocab_size=100)
    dog = tokenizer.encode("The dog")
    assert tokenizer.decode([BOS_ID] + dog + [EOS_ID] + tokenizer.encode("jumps") + [PAD_ID]) == "The dog"
    assert tokenizer.decode([BOS_ID, PAD_ID, PAD_ID]) == ""
    # a character never seen in training is <unk>, which leaves nothing in the decoded text
    ids = tokenizer.encode("The dog \u263a")
    assert UNK_ID in ids and tokenizer.decode(ids) == "The dog"
    assert tokenizer.encode_batch(["The dog", "Two dogs"], eos=True) == \
        [tokenizer.encode("The dog", eos=True), tokenizer.encode("Two dogs", eos=True)]
    assert tokenizer.pieces("The dog")[0].startswith("\u2581")  # the SentencePiece word-start marker


def test_shared_and_separate_vocabularies_save_and_load(tmp_path):
    shared = SubwordVocabularies.train(ENGLISH, GERMAN, "bpe", vocab_size=150, shared=True)
    assert shared.source is shared.target
    assert shared.source.encode("Hund") == shared.target.encode("Hund")
    shared.save(tmp_path / "shared")
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["shared.json", "subword.json"]
    loaded = SubwordVocabularies.load(tmp_path / "shared")
    assert loaded.shared and loaded.source is loaded.target and loaded.model == "bpe"
    assert loaded.target.encode(GERMAN[0]) == shared.target.encode(GERMAN[0])

    separate = SubwordVocabularies.train(ENGLISH, GERMAN, "unigram", vocab_size=150, shared=False)
    assert separate.source is not separate.target
    assert "\u2581Hund" in separate.target.tokenizer.get_vocab()
    assert "\u2581Hund" not in separate.source.tokenizer.get_vocab()
    separate.save(tmp_path / "separate")
    loaded = SubwordVocabularies.load(tmp_path / "separate")
    assert not loaded.shared and loaded.model == "unigram"
    assert loaded.source.encode(ENGLISH[1]) == separate.source.encode(ENGLISH[1])
    assert loaded.target.decode(loaded.target.encode(GERMAN[2])) == GERMAN[2]
    meta = json.loads((tmp_path / "separate" / "subword.json").read_text())
    assert meta["files"] == {"source": "source.json", "target": "target.json"} and meta["vocab_size"] == 150


def test_unreadable_folders_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="subword.json is missing"):
        SubwordVocabularies.load(tmp_path)
    SubwordVocabularies.train(ENGLISH, GERMAN, "bpe", vocab_size=100, shared=True).save(tmp_path)
    (tmp_path / "shared.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"shared\.json: not a readable subword tokenizer"):
        SubwordVocabularies.load(tmp_path)
    (tmp_path / "subword.json").write_text('{"format": 1}')
    with pytest.raises(CheckpointError, match=r"subword\.json: unreadable subword metadata"):
        SubwordVocabularies.load(tmp_path)


def test_bad_settings():
    with pytest.raises(ConfigError, match="unknown subword model 'wordpiece'"):
        train_subword(ENGLISH, "wordpiece")
    with pytest.raises(ConfigError, match="more than 4 entries"):
        train_subword(ENGLISH, "bpe", vocab_size=4)
    with pytest.raises(ValueError, match="'<pad>' at id 0"):
        from tokenizers import Tokenizer, models
        SubwordTokenizer(Tokenizer(models.BPE()))


def test_multi30k_bpe_8k(multi30k):
    train = read_parallel_files(multi30k / "train.en", multi30k / "train.de")
    test = read_parallel_files(multi30k / "test_2016_flickr.en", multi30k / "test_2016_flickr.de")
    vocabularies = SubwordVocabularies.train(train.sources, train.targets, "bpe", vocab_size=8000, shared=True)
    tokenizer = vocabularies.target
    assert tokenizer.vocab_size == 8000
    ids = tokenizer.encode_batch(test.targets)
    # whole words of the training text are single pieces; held-out German still decodes exactly
    assert tokenizer.pieces("Ein Mann")[:2] == ["\u2581Ein", "\u2581Mann"]
    assert tokenizer.decode_batch(ids) == test.targets
    assert 10 < sum(map(len, ids)) / len(ids) < 20  # pieces per sentence
