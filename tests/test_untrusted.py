"""Checkpoint contents are untrusted input: every tampered field of a saved tokenizer or model
ends in one line naming the file and the fault, for sampling, resuming and the playground."""

import json
from pathlib import Path

import pytest
import torch

from rnnlm.data.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer
from rnnlm.models.loading import CHECKPOINT_FORMAT
from rnnlm.models.network import RNNLM
from rnnlm.sampling.playground.catalogue import Catalogue
from rnnlm.sampling.sample import sample
from rnnlm.training.resume import check_architecture, check_resumable
from rnnlm.utils.errors import CheckpointError, RnnlmError
from tests.conftest import compose_config

TEXT = "the cat sat on the mat. héllo wörld — the end.\n\n" * 20
TOKENIZERS = {"char": lambda: CharTokenizer.fit(TEXT), "word": lambda: WordTokenizer.fit(TEXT),
              "bpe": lambda: BPETokenizer.fit(TEXT, 300)}


def checkpoint_of(tokenizer) -> dict:
    """What training saves, for a tiny untrained network: plain data and tensors."""
    torch.manual_seed(0)
    arch = {"vocab_size": len(tokenizer), "cell": "gru", "hidden_size": 8, "num_layers": 1, "embedding_dim": 4}
    net = RNNLM(**arch)
    return {"rnnlm_format": CHECKPOINT_FORMAT, "global_step": 3, "hyper_parameters": {**arch, "tokenizer": tokenizer.to_dict()},
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}


def bpe_json(edit):
    def tamper(ckpt):
        state = ckpt["hyper_parameters"]["tokenizer"]
        data = json.loads(state["model_json"])
        edit(data)
        state["model_json"] = json.dumps(data)
    return tamper


def tokenizer_field(key, value):
    def tamper(ckpt):
        ckpt["hyper_parameters"]["tokenizer"][key] = value
    return tamper


def vocab_entry(i, value):
    def tamper(ckpt):
        ckpt["hyper_parameters"]["tokenizer"]["vocab"][i] = value
    return tamper


def renamed_token(data):
    vocab = data["model"]["vocab"]
    old = next(t for t, i in vocab.items() if i == 100)
    vocab["☃"] = vocab.pop(old)


CASES = [  # (tokenizer, what is done to the checkpoint, the line expected)
    ("word", tokenizer_field("kind", "char"), r"its tokenizer is damaged: token \d+ of the char vocabulary is '.+', not one character"),
    ("char", vocab_entry(3, 7), r"token 3 of the char vocabulary is 7, not one character"),
    ("word", vocab_entry(4, None), r"token 4 of the word vocabulary is None, not non-empty text"),
    ("word", vocab_entry(5, ""), r"token 5 of the word vocabulary is '', not non-empty text"),
    ("char", lambda c: c["hyper_parameters"]["tokenizer"]["vocab"].__setitem__(2, "a") or
     c["hyper_parameters"]["tokenizer"]["vocab"].__setitem__(3, "a"), r"the char vocabulary holds 'a' twice"),
    ("char", vocab_entry(0, "x"), r"a vocabulary starts with '<unk>'"),
    ("char", tokenizer_field("vocab", "abc"), r"the char vocabulary is not a list of 2 to 16,777,216 tokens"),
    ("word", tokenizer_field("pattern", "(unclosed"), r"the word tokenizer's pattern '\(unclosed' is not one rnnlm writes"),
    ("word", tokenizer_field("pattern", r"(a+)+$"), r"is not one rnnlm writes"),
    ("char", tokenizer_field("start", 5), r"the tokenizer's start text is int '5', not text of at most 1048576 characters"),
    ("char", tokenizer_field("kind", "gpt"), r"tokenizer kind 'gpt' is none of char, word, bpe"),
    ("bpe", tokenizer_field("model_json", 5), r"the BPE tokenizer's model_json is int, not text"),
    ("bpe", lambda c: c["hyper_parameters"]["tokenizer"].update(model_json=c["hyper_parameters"]["tokenizer"]["model_json"][:500]),
     r"the BPE tokenizer's model_json does not load \("),
    ("bpe", bpe_json(renamed_token), r"token 100 of the BPE tokenizer is '☃', not byte-level text"),
    ("bpe", bpe_json(lambda d: d.update(added_tokens=[])) , None),  # still a whole tokenizer: loads
    ("bpe", bpe_json(lambda d: d["model"]["vocab"].pop("<unk>")), r"the BPE tokenizer has \d+ tokens, id 0 .*: not '<unk>'"),
    ("char", lambda c: c.update(hyper_parameters=[1, 2]), r"is damaged: its hyper-parameters are list, not a mapping"),
    ("char", lambda c: c["hyper_parameters"].pop("tokenizer"), r"its hyper-parameters hold no tokenizer"),
    ("char", lambda c: c["hyper_parameters"].update(tokenizer=[1]), r"the tokenizer state is list, not a mapping"),
    ("char", lambda c: c["hyper_parameters"]["tokenizer"]["vocab"].pop(), r"vocabulary of \d+ tokens but the model predicts \d+"),
    ("char", lambda c: c.update(state_dict=5), r"is damaged: its state_dict is not a mapping of names to tensors"),
    ("char", lambda c: c.update(global_step="x"), r"is damaged: its global_step is 'x', not a count of steps"),
    ("char", lambda c: c["state_dict"].update({"net.embed.weight": [1.0]}), r"its state_dict is not a mapping of names to tensors"),
    ("char", lambda c: c["hyper_parameters"].update(hidden_size=10**12), r"cannot build a model"),
]


@pytest.mark.parametrize(("kind", "tamper", "message"), CASES)
def test_a_tampered_checkpoint_is_one_line_naming_the_file(tmp_path, kind, tamper, message):
    ckpt = checkpoint_of(TOKENIZERS[kind]())
    tamper(ckpt)
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    cfg = compose_config("sample", [f"ckpt={path}", "length=5", "prompt=''", "stream=false"], tmp_path / "out")
    if message is None:
        sample(cfg)
        return
    with pytest.raises(CheckpointError, match=message) as caught:
        sample(cfg)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_the_playground_does_not_offer_a_damaged_checkpoint(tmp_path, caplog):
    good, bad = checkpoint_of(TOKENIZERS["char"]()), checkpoint_of(TOKENIZERS["char"]())
    vocab_entry(3, 7)(bad)
    torch.save(good, tmp_path / "good.ckpt")
    torch.save(bad, tmp_path / "bad.ckpt")
    catalogue = Catalogue(tmp_path, device="cpu")
    assert [e.id for e in catalogue.entries()] == ["good.ckpt"]
    assert "bad.ckpt (a damaged tokenizer)" in caplog.text
    assert catalogue.model("good.ckpt").loaded.tokenizer.encode("the").tolist() != [0, 0, 0]


def test_resuming_from_a_checkpoint_with_a_damaged_tokenizer_is_one_line(tmp_path):
    tokenizer = TOKENIZERS["bpe"]()
    ckpt = checkpoint_of(tokenizer)
    hparams = dict(ckpt["hyper_parameters"])
    bpe_json(renamed_token)(ckpt)
    with pytest.raises(CheckpointError, match=r"last.ckpt: its tokenizer is damaged: token 100 of the BPE tokenizer"):
        check_architecture(Path("last.ckpt"), ckpt, hparams)


def test_bpe_merges_are_compared_as_merges_not_as_json_text():
    tokenizer = TOKENIZERS["bpe"]()
    ckpt = checkpoint_of(tokenizer)
    hparams = dict(ckpt["hyper_parameters"])
    data = json.loads(tokenizer.model_json)
    respaced = BPETokenizer(json.dumps(data, indent=1, sort_keys=True))  # the same merges, written another way
    check_architecture(Path("last.ckpt"), ckpt, {**hparams, "tokenizer": respaced.to_dict()})
    merges = data["model"]["merges"]
    merges[0], merges[1] = merges[1], merges[0]  # the same tokens; merged in another order
    reordered = BPETokenizer(json.dumps(data))
    with pytest.raises(Exception, match=r"the same tokens, split from text another way"):
        check_architecture(Path("last.ckpt"), ckpt, {**hparams, "tokenizer": reordered.to_dict()})


def test_a_weights_only_checkpoint_is_not_resumed(tmp_path):
    ckpt = checkpoint_of(TOKENIZERS["char"]())  # no optimizer_states or loops, as save_weights_only writes
    with pytest.raises(RnnlmError, match=r"cannot resume from last.ckpt: it holds no optimizer_states or loops \(saved with weights only\?\)"):
        check_resumable(Path("last.ckpt"), ckpt)
    check_resumable(Path("last.ckpt"), {**ckpt, "optimizer_states": [], "loops": {}})
