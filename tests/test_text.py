"""Text encoders: the offline SceneCLIP and the real CLIP path (tested without a download)."""
import json

import pytest
import torch

from tinyldm.text import (CLIPTextEncoder, SceneCLIP, SceneCLIPConfig, TextEncoderNotFound, WordTokenizer,
                          clip_loss, scene_vocabulary)
from tinyldm.data import Scenes


def small_config(**overrides):
    return SceneCLIPConfig(**{"width": 16, "layers": 1, "heads": 2, "embed_dim": 8, "image_widths": (8,),
                              **overrides})


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return SceneCLIP(small_config())


def test_vocabulary_covers_every_caption_word():
    vocab = set(scene_vocabulary())
    data = Scenes(size=32, length=300, seed=0, max_objects=4)
    words = {w for i in range(len(data)) for w in WordTokenizer.split(data[i]["caption"])}
    assert words <= vocab, words - vocab
    assert {"red", "crimson", "star", "five", "pointed", "triangle"} <= vocab


def test_word_tokenizer_ids_mask_unknown_words_and_truncation():
    tok = WordTokenizer(["a", "red", "star"], max_length=6)
    ids, mask = tok(["a red star", "A RED, red dragon!", ""])
    bos, eos, unk = (tok.index[w] for w in ("<bos>", "<eos>", "<unk>"))
    assert ids[0].tolist() == [bos, tok.index["a"], tok.index["red"], tok.index["star"], eos, 0]
    assert ids[1, 4].item() == unk and tok.decode(ids[1]) == ["<bos>", "a", "red", "red", "<unk>", "<eos>"]
    assert ids[2].tolist()[:2] == [bos, eos]  # the empty prompt, the null condition, is <bos> <eos>
    assert mask.tolist() == [[True] * 5 + [False], [True] * 6, [True] * 2 + [False] * 4]
    with pytest.warns(UserWarning, match="prompt has 7 tokens .* more than the context of 6"):
        ids, mask = tok(["a red star a red"])
    assert ids[0, -1].item() == eos and mask.all()
    with pytest.raises(ValueError, match="prompt has 7 tokens"):
        tok(["a red star a red"], truncate=False)


def test_scene_clip_hidden_states_shape_mask_and_frozen(encoder):
    hidden, mask = encoder.encode(["a red star", "there is a small blue square at the top", ""])
    assert hidden.shape == (3, 40, 16) and mask.shape == (3, 40) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [5, 11, 2]
    assert not hidden.requires_grad and encoder.dim == 16 and encoder.max_length == 40


def test_scene_clip_is_deterministic_and_independent_of_the_batch(encoder):
    alone, _ = encoder.encode(["a red star"])
    batched, mask = encoder.encode(["a purple circle on a dark background", "a red star"])
    again, _ = encoder.encode(["a red star"])
    assert torch.equal(alone, again)
    # padding is masked out in the text transformer, so a prompt's real tokens do not depend on its batch
    torch.testing.assert_close(batched[1][mask[1]], alone[0][mask[1]], atol=1e-5, rtol=1e-5)


def test_scene_clip_save_load_round_trip(encoder, tmp_path):
    encoder.save(tmp_path / "text.safetensors", zero_shot_accuracy=0.5)
    loaded = SceneCLIP.load(tmp_path / "text.safetensors")
    assert loaded.tokenizer.words == encoder.tokenizer.words
    torch.testing.assert_close(loaded.encode(["a green box"])[0], encoder.encode(["a green box"])[0])


def test_clip_loss_learns_to_match_images_and_captions():
    torch.manual_seed(0)
    model = SceneCLIP(small_config(width=32, image_widths=(16, 16)))
    data = Scenes(size=32, length=8, seed=0)
    batch = {"image": torch.stack([data[i]["image"] for i in range(8)]),
             "caption": [data[i]["caption"] for i in range(8)]}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss, logs = clip_loss(model, batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first and logs["acc_i2t"] >= 0.75, (first, loss.item(), logs)


def test_bad_prompts_and_images(encoder):
    with pytest.raises(ValueError, match="expected a list of prompt strings"):
        encoder.encode("a red star")
    with pytest.raises(ValueError, match="expected at least one prompt"):
        encoder.encode([])
    with pytest.raises(ValueError, match=r"expected images \[b, 3, H, W\], got shape \[2, 1, 32, 32\]"):
        encoder.image_embeds(torch.zeros(2, 1, 32, 32))


# -- the real CLIP path, without a download: a tiny random CLIPTextModel and a tokenizer of a small vocabulary

@pytest.fixture(scope="module")
def tiny_clip_folder(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    # a byte-pair vocabulary in CLIP's format: word-final pieces end in </w>; merges list the pair merges
    vocab = ["a</w>", "d</w>", "r</w>", "w</w>", "r", "e", "d", "s", "t", "a", "l", "o", "w", "re", "st", "sta",
             "lo", "red</w>", "star</w>", "low</w>", "er</w>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\ns t\nst a\nsta r</w>\nl o\nlo w</w>\ne r</w>\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77,
                            bos_token_id=vocab.index("<|startoftext|>"), eos_token_id=vocab.index("<|endoftext|>"),
                            pad_token_id=vocab.index("<|endoftext|>"))
    CLIPTextModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_clip_text_encoder_gives_last_hidden_state_padded_to_77(tiny_clip_folder):
    from transformers import CLIPTextModel

    enc = CLIPTextEncoder.from_pretrained(str(tiny_clip_folder))
    hidden, mask = enc.encode(["a red star", "low"])
    assert hidden.shape == (2, 77, 32) and enc.dim == 32 and enc.max_length == 77
    assert mask.sum(1).tolist() == [5, 3]  # <|startoftext|> a red star <|endoftext|>; <|startoftext|> low <|eot|>
    ids = enc.tokenizer(["a red star"], padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():  # as Stable Diffusion calls it: input_ids only, the last hidden state
        expected = CLIPTextModel.from_pretrained(tiny_clip_folder)(input_ids=ids).last_hidden_state
    torch.testing.assert_close(hidden[:1], expected)
    assert not any(p.requires_grad for p in enc.parameters())


def test_clip_text_encoder_truncates_long_prompts_with_a_warning(tiny_clip_folder):
    enc = CLIPTextEncoder.from_pretrained(str(tiny_clip_folder))
    long = " ".join(["red star"] * 50)
    with pytest.warns(UserWarning, match="prompt has 102 tokens .* more than the context of 77"):
        hidden, mask = enc.encode([long])
    assert hidden.shape == (1, 77, 32) and mask.all()
    with pytest.raises(ValueError, match="more than the context of 77"):
        enc.encode([long], truncate=False)


def test_missing_clip_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TextEncoderNotFound, match="huggingface-cli download"):
        CLIPTextEncoder.from_pretrained(str(tmp_path / "no-such-folder"))
    with pytest.raises(TextEncoderNotFound, match="never downloads"):
        CLIPTextEncoder.from_pretrained("someone/not-in-the-cache")
