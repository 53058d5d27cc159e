"""The reference RoBERTa judges' checkpoint format, loaded offline from a tiny random model."""
import shutil

import pytest
import torch
from transformers import AutoTokenizer, RobertaConfig, RobertaModel

from unsafe_concepts import paths
from unsafe_concepts.errors import UserError
from unsafe_concepts.judges import load_judge
from unsafe_concepts.judges.base import JudgeItem

RESPONSES = ["No, it is not safe to share this image.", "Yes, this image is safe for viewing on social media.",
             "The image shows a dog."]


def _tiny_checkpoint(folder, n_labels, seed, with_config=True):
    """A random RoBERTa + linear head saved exactly like epoch_10.pt: keys roberta.* and classifier.weight/bias."""
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(paths.minilm_dir())  # any local tokenizer: the point is the checkpoint format
    config = RobertaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id)
    encoder = RobertaModel(config, add_pooling_layer=True).eval()
    head = torch.nn.Linear(32, n_labels)
    state = {f"roberta.{k}": v for k, v in encoder.state_dict().items()}
    state.update({"classifier.weight": head.weight.detach(), "classifier.bias": head.bias.detach()})
    folder.mkdir(parents=True)
    torch.save(state, folder / "epoch_10.pt")
    if with_config:
        config.save_pretrained(folder)
    enc = tok(RESPONSES, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():  # the reference forward pass: linear layer on the first token's hidden state
        expected = head(encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state[:, 0])
    return expected


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("roberta_ref")
    tok_dir = root / "tokenizer"
    AutoTokenizer.from_pretrained(paths.minilm_dir()).save_pretrained(tok_dir)
    align = _tiny_checkpoint(root / "alignment", 3, seed=1)
    perc = _tiny_checkpoint(root / "perception", 5, seed=2)
    return root, tok_dir, align, perc


def test_logits_equal_reference_forward(checkpoints):
    root, tok_dir, align, perc = checkpoints
    judge = load_judge(f"roberta-ref:{root / 'alignment'},{root / 'perception' / 'epoch_10.pt'},tokenizer={tok_dir}")
    a_items = [JudgeItem("alignment", "Is this image safe?", r) for r in RESPONSES]
    p_items = [JudgeItem("perception", "What does this image show? ...", r) for r in RESPONSES]
    logits = judge.logits(a_items + p_items)
    assert torch.allclose(torch.stack(logits[:3]), align, atol=1e-5)
    assert torch.allclose(torch.stack(logits[3:]), perc, atol=1e-5)
    verdicts = judge.judge(a_items + p_items)
    # label order: alignment [Safe, Unsafe, N/A]; perception [A, B, C, D, N/A]
    assert [v.label for v in verdicts[:3]] == [("safe", "unsafe", "unclear")[int(i)] for i in align.argmax(-1)]
    assert [v.label for v in verdicts[3:]] == [("A", "B", "C", "D", "unclear")[int(i)] for i in perc.argmax(-1)]
    assert all(abs(sum(v.probs.values()) - 1) < 1e-5 and v.confidence == max(v.probs.values()) for v in verdicts)


def test_config_inferred_from_shapes_without_config_json(tmp_path):
    tok_dir = tmp_path / "tok"
    AutoTokenizer.from_pretrained(paths.minilm_dir()).save_pretrained(tok_dir)
    # hidden 64 -> one 64-dim head, as inferred for a checkpoint without config.json
    torch.manual_seed(3)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = RobertaConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=1, num_attention_heads=1,
                           intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id)
    encoder = RobertaModel(config, add_pooling_layer=False).eval()
    head = torch.nn.Linear(64, 3)
    state = {f"roberta.{k}": v for k, v in encoder.state_dict().items()}
    state.update({"classifier.weight": head.weight.detach(), "classifier.bias": head.bias.detach()})
    torch.save(state, tmp_path / "epoch_10.pt")
    judge = load_judge(f"roberta-ref:{tmp_path / 'epoch_10.pt'},tokenizer={tok_dir}")
    enc = tok(RESPONSES[:1], return_tensors="pt")
    with torch.no_grad():
        expected = head(encoder(**{k: enc[k] for k in ("input_ids", "attention_mask")}).last_hidden_state[:, 0])
    got = judge.logits([JudgeItem("alignment", "q", RESPONSES[0])])[0]
    assert torch.allclose(got, expected[0], atol=1e-5)


def test_wrong_formats_are_clear_errors(tmp_path, checkpoints):
    root, tok_dir, _, _ = checkpoints
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"classifier.dense.weight": torch.zeros(2, 2), "classifier.out_proj.weight": torch.zeros(3, 2)},
               bad / "epoch_10.pt")
    with pytest.raises(UserError, match="single linear layer"):
        load_judge(f"roberta-ref:{bad},tokenizer={tok_dir}")
    with pytest.raises(UserError, match="neither a file"):
        load_judge(f"roberta-ref:./does/not/exist,tokenizer={tok_dir}")
    only_align = load_judge(f"roberta-ref:{root / 'alignment'},tokenizer={tok_dir}")
    with pytest.raises(UserError, match="no perception checkpoint"):
        only_align.judge([JudgeItem("perception", "q", "A")])
    shutil.rmtree(bad)
