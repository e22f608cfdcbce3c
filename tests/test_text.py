"""Text encoders: the offline SceneCLIP and the real CLIP path (tested without a download or the network)."""
import hashlib
import json
import os
import re
import shutil
import socket

import pytest
import torch

from network_guard import NetworkAttempt, no_network
from tinyldm.text import (CLIP_DOWNLOAD, CLIP_VIT_L_14, CLIPTextEncoder, SceneCLIP, SceneCLIPConfig,
                          TextEncoderNotFound, WordTokenizer, clip_loss, scene_vocabulary)
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


# -- the real CLIP path, without a download: a tiny random CLIPTextModel and a tokenizer of a small vocabulary.
# Loading must make no network attempt whatever the environment: these tests switch the hub's offline mode off and
# fail on any name look-up or connection (network_guard).

TINY_VOCAB = ["a</w>", "d</w>", "r</w>", "w</w>", "r", "e", "d", "s", "t", "a", "l", "o", "w", "re", "st", "sta",
              "lo", "red</w>", "star</w>", "low</w>", "er</w>", "<unk>", "<|startoftext|>", "<|endoftext|>"]


def tiny_text_config():
    from transformers import CLIPTextConfig

    sot, eot = TINY_VOCAB.index("<|startoftext|>"), TINY_VOCAB.index("<|endoftext|>")
    return CLIPTextConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, bos_token_id=sot, eos_token_id=eot,
                          pad_token_id=eot)


def save_tiny_tokenizer(folder):
    from transformers import CLIPTokenizer

    # a byte-pair vocabulary in CLIP's format: word-final pieces end in </w>; merges list the pair merges
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(TINY_VOCAB)}))
    (folder / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\ns t\nst a\nsta r</w>\nl o\nlo w</w>\ne r</w>\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77).save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(folder, model): a tiny random CLIPTextModel and its tokenizer, as save_pretrained writes them."""
    from transformers import CLIPTextModel

    folder = tmp_path_factory.mktemp("tiny-clip")
    save_tiny_tokenizer(folder)
    torch.manual_seed(0)
    model = CLIPTextModel(tiny_text_config()).eval()
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, with the hub's offline switch off: the loader alone must keep off
    the network."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads the environment once, at import
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


def cache_like_the_hub(cache, repo_id, folder, names=None):
    """Put `folder`'s files (those in `names`, default all) in `cache` as `hf download` does: blobs, a snapshot
    of links to them, and refs/main naming the snapshot's commit. Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(folder.iterdir()):
        if names is None or file.name in names:
            blob = blobs / hashlib.sha256(file.read_bytes()).hexdigest()
            shutil.copyfile(file, blob)
            (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_the_network_guard_fails_on_a_network_attempt():
    with pytest.raises(NetworkAttempt, match="socket.getaddrinfo example.com:80"):
        with no_network():
            socket.getaddrinfo("example.com", 80)
    with pytest.raises(NetworkAttempt, match="socket.gethostbyname example.com"):
        with no_network():
            socket.gethostbyname("example.com")
    with socket.socket() as sock, pytest.raises(NetworkAttempt, match=r"socket.connect 192\.0\.2\.1:80"):
        with no_network():
            sock.connect(("192.0.2.1", 80))  # an address needs no look-up: the connection itself is caught
    # an attempt that the code under test swallows still fails the block, when it ends
    with pytest.raises(NetworkAttempt, match=r"1 network attempt\(s\) inside no_network\(\): socket.getaddrinfo "
                                             r"example.org:443"):
        with no_network() as attempts:
            try:
                socket.create_connection(("example.org", 443), timeout=1)
            except Exception:
                pass
    assert attempts == ["socket.getaddrinfo example.org:443"]
    # outside a block the guard lets everything through (a numeric address resolves without the network)
    assert socket.getaddrinfo("127.0.0.1", 80)


def test_missing_clip_weights_say_how_to_get_them_without_the_network(hub_cache, tmp_path):
    with no_network():
        for name, args in (("someone/not-in-the-cache", ["someone/not-in-the-cache"]), (CLIP_VIT_L_14, [])):
            with pytest.raises(TextEncoderNotFound) as error:
                CLIPTextEncoder.from_pretrained(*args)  # no args: the default, CLIP ViT-L/14
            message = str(error.value)
            assert f"{name!r} are not on this machine" in message, message
            assert f"hf download {name} {' '.join(CLIP_DOWNLOAD)}" in message and str(hub_cache) in message
        with pytest.raises(TextEncoderNotFound, match="(?s)'.*no-such-folder' is neither a folder nor a hub model id .*"
                                                      "hf download openai/clip-vit-large-patch14 config.json"):
            CLIPTextEncoder.from_pretrained(str(tmp_path / "no-such-folder"))


def test_a_folder_without_all_the_clip_files_names_the_missing_ones(hub_cache, tiny_clip, tmp_path):
    folder = tmp_path / "partial"
    folder.mkdir()
    for name in ("config.json", "vocab.json"):
        shutil.copy(tiny_clip[0] / name, folder)
    with no_network(), pytest.raises(TextEncoderNotFound, match=f"{re.escape(str(folder))} lacks merges.txt, "
                                                                r"model.safetensors or pytorch_model.bin\. "):
        CLIPTextEncoder.from_pretrained(str(folder))
    snapshot = cache_like_the_hub(hub_cache, "tiny/partial", folder)  # a download that stopped half way
    with no_network(), pytest.raises(TextEncoderNotFound, match=f"(?s){re.escape(str(snapshot))} lacks merges.txt, "
                                                                r"model.safetensors .*hf download tiny/partial"):
        CLIPTextEncoder.from_pretrained("tiny/partial")


def test_clip_text_encoder_loads_offline_from_a_folder_and_from_the_hub_cache(hub_cache, tiny_clip):
    folder, saved = tiny_clip
    cache_like_the_hub(hub_cache, "tiny/clip", folder, names=CLIP_DOWNLOAD)  # what the hint's command fetches
    sot, eot = TINY_VOCAB.index("<|startoftext|>"), TINY_VOCAB.index("<|endoftext|>")
    for name in (str(folder), "tiny/clip"):
        with no_network():
            enc = CLIPTextEncoder.from_pretrained(name)
            hidden, mask = enc.encode(["a red star", "low"])
        assert hidden.shape == (2, 77, 32) and enc.dim == 32 and enc.max_length == 77
        assert mask.sum(1).tolist() == [5, 3]  # <|startoftext|> a red star <|endoftext|>; <|startoftext|> low <|eot|>
        ids = enc.tokenizer(["a red star", "low"], padding="max_length", max_length=77,
                            return_tensors="pt")["input_ids"]
        words = [TINY_VOCAB.index(w) for w in ("a</w>", "red</w>", "star</w>")]
        assert ids[0, :6].tolist() == [sot, *words, eot, eot]  # <|endoftext|> pads
        with torch.no_grad():  # as Stable Diffusion calls it: input_ids only, the last hidden state
            torch.testing.assert_close(hidden, saved(input_ids=ids).last_hidden_state)
        assert not any(p.requires_grad for p in enc.parameters())


def save_tiny_whole_clip(folder, image_size: int = 8, patch_size: int = 4, projection_dim: int = 8):
    """A tiny random whole CLIP (text and vision towers) and its tokenizer in ``folder``, as the hub's openai/clip-*
    checkpoints hold them. Returns the model."""
    from transformers import CLIPConfig, CLIPModel

    save_tiny_tokenizer(folder)
    torch.manual_seed(0)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=image_size, patch_size=patch_size)
    clip = CLIPModel(CLIPConfig(text_config=tiny_text_config().to_dict(), vision_config=vision,
                                projection_dim=projection_dim)).eval()
    clip.save_pretrained(folder)
    return clip


def test_clip_text_encoder_takes_the_text_model_of_a_whole_clip_checkpoint(tmp_path):
    # openai/clip-vit-large-patch14 holds the whole CLIP (text and vision): the loader keeps the text transformer
    clip = save_tiny_whole_clip(tmp_path)
    with no_network():
        hidden, _ = CLIPTextEncoder.from_pretrained(str(tmp_path)).encode(["a red star"])
    ids = torch.tensor([[TINY_VOCAB.index(w) for w in ("<|startoftext|>", "a</w>", "red</w>", "star</w>")]
                        + [TINY_VOCAB.index("<|endoftext|>")] * 73])
    with torch.no_grad():
        torch.testing.assert_close(hidden, clip.text_model(input_ids=ids).last_hidden_state)


def test_clip_text_encoder_truncates_long_prompts_with_a_warning(tiny_clip):
    enc = CLIPTextEncoder.from_pretrained(str(tiny_clip[0]))
    long = " ".join(["red star"] * 50)
    with pytest.warns(UserWarning, match="prompt has 102 tokens .* more than the context of 77"):
        hidden, mask = enc.encode([long])
    assert hidden.shape == (1, 77, 32) and mask.all()
    with pytest.raises(ValueError, match="more than the context of 77"):
        enc.encode([long], truncate=False)
