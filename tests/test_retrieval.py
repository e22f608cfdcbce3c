"""Retrieval: the database, exact and FAISS search, exclusions, persistence, the encoders, the neighbour cache and
the retrieval condition through the UNet."""
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import perturbed
from network_guard import no_network

from tinyldm.checkpoint import CheckpointError
from tinyldm.data import Scenes
from tinyldm.retrieval import (CLIPImageEncoder, Database, RetrievalCondition, RetrievalError,
                               SceneImageEncoder, WithNeighbours, compute_neighbours, load_or_compute_neighbours,
                               neighbour_counts)
from tinyldm.text import SceneCLIP, SceneCLIPConfig, TextEncoderNotFound
from tinyldm.unet import UNet, UNetConfig


def clustered(n=3000, d=32, clusters=50, seed=0):
    """Unit vectors around ``clusters`` centres: neighbours mean something, as in real embeddings."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    x = centres[torch.randint(clusters, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    return F.normalize(x, dim=-1)


def brute_force(db_x, q, k, banned=None):
    s = F.normalize(q, dim=-1) @ db_x.T
    if banned is not None:
        s = s.masked_fill(banned, float("-inf"))
    return s.topk(k, dim=1)


@pytest.fixture(scope="module")
def small_clip():
    torch.manual_seed(0)
    return SceneCLIP(SceneCLIPConfig(width=16, layers=1, heads=2, embed_dim=8, image_widths=(8,)))


def test_exact_search_equals_brute_force_whatever_the_chunk():
    x = clustered()
    db = Database(x, ids=torch.arange(len(x)) + 100)
    q = torch.randn(17, x.shape[1])
    want_s, want_r = brute_force(x, q, 5)
    for chunk in (97, 1000, 65536):
        s, r = db.search(q, 5, chunk=chunk)
        torch.testing.assert_close(s, want_s)
        assert torch.equal(r, want_r)
    assert torch.equal(db.ids[r], want_r + 100)  # rows map back to the source ids
    torch.testing.assert_close(db.neighbours(r), x[want_r])  # [q, k, d]
    assert (s[:, :-1] >= s[:, 1:]).all()  # most similar first


def test_exclusion_of_ids_and_of_near_duplicates():
    x = clustered(1000)
    db = Database(x, ids=torch.arange(1000) * 3)  # ids are not rows
    q = x[:20]  # queries that are in the database
    s, r = db.search(q, 4)
    assert torch.equal(r[:, 0], torch.arange(20)) and torch.allclose(s[:, 0], torch.ones(20))  # each finds itself
    own = db.ids[:20][:, None]
    other = torch.full((20, 1), -1)
    other[:5, 0] = db.ids[999]  # a second excluded id for some queries, -1 pads the rest
    s, r = db.search(q, 4, exclude_ids=torch.cat([own, other], 1), chunk=128)
    banned = torch.zeros(20, 1000, dtype=torch.bool)
    banned[torch.arange(20), torch.arange(20)] = True
    banned[:5, 999] = True
    want_s, want_r = brute_force(x, q, 4, banned)
    assert torch.equal(r, want_r) and not (r == torch.arange(20)[:, None]).any()
    s, r = db.search(q, 4, max_similarity=0.95)
    assert (s <= 0.95).all()
    want_s, want_r = brute_force(x, q, 4, (F.normalize(q, dim=-1) @ x.T) > 0.95)
    assert torch.equal(r, want_r)


def test_faiss_indexes_flat_ivf_hnsw_against_exact_search(tmp_path):
    x = clustered(5000)
    db = Database(x)
    q = clustered(64, seed=1)
    _, exact = db.search(q, 4)
    recalls = {}
    for kind in ("flat", "ivf", "hnsw"):
        index = db.use_index(kind)
        assert index.nbytes >= db.embeddings.numel() * 4  # every index keeps the vectors
        s, r = db.search(q, 4)
        recalls[kind] = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(r, exact)) / exact.numel()
        # exclusions through FAISS: over-fetch, filter, answer k
        s2, r2 = db.search(q, 4, exclude_ids=r[:, :1])
        assert not (r2 == r[:, :1]).any() and r2.shape == (64, 4)
        assert torch.equal(db.search(q, 4, exact=True)[1], exact)  # exact=True bypasses the index
    assert recalls["flat"] == 1.0 and recalls["ivf"] >= 0.9 and recalls["hnsw"] >= 0.9, recalls
    db.index.set(ef_search=128)
    with pytest.raises(RetrievalError, match="no search parameter 'nprobe'"):
        db.index.set(nprobe=4)


def test_database_and_index_persistence_round_trip_and_mismatch(tmp_path):
    db = Database(clustered(2000), ids=torch.arange(2000) + 7, info={"encoder": "x", "encoder_fingerprint": "abc"})
    db.save(tmp_path / "db.safetensors")
    back = Database.load(tmp_path / "db.safetensors")
    assert torch.equal(back.embeddings, db.embeddings) and torch.equal(back.ids, db.ids)
    assert back.info["encoder_fingerprint"] == "abc" and back.fingerprint == db.fingerprint
    db.use_index("ivf", nlist=16).save(tmp_path / "ivf.safetensors")
    index = back.load_index(tmp_path / "ivf.safetensors")
    q = clustered(8, seed=3)
    assert index.kind == "ivf" and index.params["nlist"] == 16
    assert torch.equal(back.search(q, 3)[1], db.search(q, 3)[1])
    other = Database(clustered(2000, seed=5))
    with pytest.raises(RetrievalError, match="indexes other embeddings .* than this database"):
        other.load_index(tmp_path / "ivf.safetensors")
    with pytest.raises(CheckpointError, match="holds a 'faiss_index' model, expected a 'database'"):
        Database.load(tmp_path / "ivf.safetensors")
    assert db.nbytes == 2000 * 32 * 4 + 2000 * 8 and db.bytes_per_embedding == 32 * 4 + 8


def test_bad_inputs_get_clear_errors(small_clip):
    db = Database(clustered(100, d=8))
    with pytest.raises(RetrievalError, match="got an empty database"):
        Database(torch.zeros(0, 8))
    with pytest.raises(RetrievalError, match=r"float tensor \[n, d\], got shape \[10\]"):
        Database(torch.zeros(10))
    with pytest.raises(RetrievalError, match="width d = 8 .*got width 5"):
        db.search(torch.randn(2, 5), 3)
    with pytest.raises(RetrievalError, match=r"k in 1\.\.100 .*got k = 101"):
        db.search(torch.randn(2, 8), 101)
    with pytest.raises(RetrievalError, match="one id per embedding"):
        Database(torch.randn(4, 8), ids=[1, 2])
    with pytest.raises(RetrievalError, match="distinct ids"):
        Database(torch.randn(3, 8), ids=[1, 1, 2])
    with pytest.raises(RetrievalError, match="only 99 database items are left .* fewer than k = 100"):
        db.search(db.embeddings[:2], 100, exclude_ids=[[0], [1]])
    with pytest.raises(RetrievalError, match="one row per query"):
        db.search(torch.randn(2, 8), 3, exclude_ids=[[0], [1], [2]])
    with pytest.raises(RetrievalError, match="index kind in"):
        db.use_index("lsh")
    encoder = SceneImageEncoder(small_clip)
    built = Database.build(encoder, Scenes(size=32, length=8), progress=False)
    other = SceneImageEncoder(SceneCLIP(SceneCLIPConfig(width=16, layers=1, heads=2, embed_dim=8,
                                                        image_widths=(8,))))
    with pytest.raises(RetrievalError, match="built with the encoder 'SceneCLIP' of fingerprint .* different spaces"):
        built.search(other.embed(torch.zeros(1, 3, 32, 32)), 2, encoder=other)
    with pytest.raises(RetrievalError, match=r"images \[b, 3, H, W\]"):
        encoder.embed(torch.zeros(3, 32, 32))
    with pytest.raises(RetrievalError, match="at least one item"):
        Database.build(encoder, [], progress=False)


def test_scene_image_encoder_builds_a_database_with_ids_and_fingerprint(small_clip):
    encoder = SceneImageEncoder(small_clip)
    scenes = Scenes(size=32, length=10, seed=3)
    db = Database.build(encoder, scenes, batch_size=4, progress=False)
    images = torch.stack([scenes[i]["image"] for i in range(10)])
    with torch.no_grad():
        torch.testing.assert_close(db.embeddings, small_clip.image_embeds(images))
    assert torch.equal(db.ids, torch.arange(10)) and db.dim == 8
    assert db.info["encoder_fingerprint"] == encoder.fingerprint and db.info["dataset"] == repr(scenes)
    assert torch.allclose(db.embeddings.norm(dim=1), torch.ones(10))
    text = encoder.text_embeds(["a red star", "a blue circle"])
    assert text.shape == (2, 8) and torch.allclose(text.norm(dim=1), torch.ones(2))
    sub = db.subset(torch.arange(10) % 2 == 0)
    assert torch.equal(sub.ids, torch.arange(0, 10, 2)) and len(sub) == 5
    assert torch.equal(db.rows_of(torch.tensor([3, 42])), torch.tensor([3, -1]))


def test_cached_neighbours_are_those_the_search_returns(small_clip, tmp_path):
    encoder = SceneImageEncoder(small_clip)
    train, other = Scenes(size=32, length=12, seed=0), Scenes(size=32, length=30, seed=2)
    db = Database.build(encoder, other, progress=False)
    path = tmp_path / "nb.safetensors"
    sims, rows = load_or_compute_neighbours(encoder, train, db, path, k=5, progress=False)
    images = torch.stack([train[i]["image"] for i in range(12)])
    want_s, want_r = db.search(encoder.embed(images), 5)
    assert torch.equal(rows, want_r) and torch.allclose(sims, want_s)
    stamp = path.stat().st_mtime_ns
    assert torch.equal(load_or_compute_neighbours(encoder, train, db, path, k=5, progress=False)[1], rows)
    assert path.stat().st_mtime_ns == stamp  # reused, not computed again
    # a database made of the training set itself: each item's own image is left out
    own = Database.build(encoder, train, progress=False)
    _, rows = compute_neighbours(encoder, train, own, k=3, exclude_self=True, progress=False)
    assert not (rows == torch.arange(12)[:, None]).any()
    _, with_self = compute_neighbours(encoder, train, own, k=3, progress=False)
    assert torch.equal(with_self[:, 0], torch.arange(12))  # without the exclusion, the first neighbour is itself
    items = WithNeighbours(train, db, want_r, k=4)
    assert torch.equal(items[3]["neighbours"], db.embeddings[want_r[3, :4]]) and "image" in items[3]
    with pytest.raises(RetrievalError, match="one row per item"):
        WithNeighbours(train, db, want_r[:5])
    with pytest.raises(RetrievalError, match="outside the database"):
        WithNeighbours(train, db.subset(range(3)), want_r)
    counts = neighbour_counts(want_r, len(db))
    assert counts.sum() == want_r.numel() and len(counts) == len(db)


def test_retrieval_condition_through_the_unet():
    d, k = 8, 4
    condition = RetrievalCondition(d, k, p_uncond=0.5)
    batch = {"neighbours": F.normalize(torch.randn(6, 20, d), dim=-1)}
    out = condition(batch, torch.Generator().manual_seed(0))["context"]
    assert out.shape == (6, k, d)  # the first k of the cached 20
    dropped = (out == 0).flatten(1).all(1)
    assert 0 < dropped.sum() < 6  # some items dropped to the all-zero null context
    kept = ~dropped
    torch.testing.assert_close(out[kept], batch["neighbours"][kept, :k] * d ** 0.5)
    assert condition.given(torch.randn(3, d))["context"].shape == (3, 1, d)  # one query as one token
    assert condition.null(3)["context"].shape == (3, k, d) and not condition.null(3, length=1)["context"].any()
    with pytest.raises(ValueError, match=r"\[b, m, 8\]"):
        condition.given(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match=r"\[b, >= 4, 8\]"):
        condition({"neighbours": torch.randn(2, 3, d)})
    with pytest.raises(ValueError, match="k .* >= 1"):
        RetrievalCondition(d, 0)
    torch.manual_seed(0)
    unet = perturbed(UNet(UNetConfig.tiny(context_dim=d))).eval()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 900])
    with torch.no_grad():
        a = unet(x, t, **condition.given(torch.randn(3, k, d)))
        b = unet(x, t, **condition.null(3))
        c = unet(x, t, **condition.null(3, length=1))
    assert a.shape == x.shape and not torch.allclose(a, b)
    torch.testing.assert_close(b, c)  # the null context's length does not matter
    one = F.normalize(torch.randn(3, d), dim=-1)
    with torch.no_grad():  # one token or the same token k times: the same attention output
        torch.testing.assert_close(unet(x, t, **condition.given(one)),
                                   unet(x, t, **condition.given(one[:, None].expand(3, k, d))))


# -- the real CLIP image tower, without a download: a tiny random CLIP saved as save_pretrained writes it

@pytest.fixture(scope="module")
def tiny_whole_clip(tmp_path_factory):
    from test_text import save_tiny_whole_clip

    folder = tmp_path_factory.mktemp("tiny-whole-clip")
    clip = save_tiny_whole_clip(folder, image_size=16, patch_size=8, projection_dim=12)
    return folder, clip


def test_clip_image_encoder_loads_offline_and_matches_transformers(tiny_whole_clip, tmp_path):
    folder, clip = tiny_whole_clip
    with no_network():
        encoder = CLIPImageEncoder.from_pretrained(str(folder))
    images = torch.rand(3, 3, 24, 20) * 2 - 1  # not square, not the model's size: resized and centre-cropped
    pixel_values = encoder.prepare(images)
    assert pixel_values.shape == (3, 3, 16, 16)
    with torch.no_grad():
        # CLIP's image embedding: the projected pooled output of the vision transformer
        want = F.normalize(clip.visual_projection(clip.vision_model(pixel_values=pixel_values).pooler_output), dim=-1)
    got = encoder.embed(images)
    torch.testing.assert_close(got, want)
    assert encoder.dim == 12 and got.shape == (3, 12)
    text = encoder.text_embeds(["a red star"])
    assert text.shape == (1, 12) and torch.allclose(text.norm(dim=1), torch.ones(1))
    db = Database.build(encoder, Scenes(size=32, length=4), progress=False)
    assert db.info["encoder"] == folder.name and db.dim == 12
    with pytest.raises(TextEncoderNotFound, match="lacks config.json, model.safetensors or pytorch_model.bin"):
        CLIPImageEncoder.from_pretrained(str(tmp_path))


def test_the_cli_trains_and_evaluates_a_retrieval_model(tmp_path, monkeypatch, capsys, small_clip):
    from tinyldm.autoencoder import Autoencoder, AutoencoderConfig
    from tinyldm.cli import main
    from tinyldm.metrics import Judge, JudgeConfig

    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path)
    small_clip.save(tmp_path / "clip.safetensors")
    Autoencoder(AutoencoderConfig.tiny()).save(tmp_path / "ae.safetensors")
    common = ["--autoencoder", str(tmp_path / "ae.safetensors"), "--image-encoder", str(tmp_path / "clip.safetensors"),
              "--database-size", "40"]
    assert main(["train-diffusion", "--preset", "tiny", "--condition", "retrieval", "--k", "3", "--n-images", "8",
                 "--steps", "2", "--batch-size", "4", "--sample-every", "0", "--run-dir", str(tmp_path / "run"),
                 "--out", str(tmp_path / "unet.safetensors"), *common]) == 0
    unet = UNet.load(tmp_path / "unet.safetensors", image_encoder=SceneImageEncoder(small_clip))
    assert unet.config.context_dim == 8 and unet.info["k"] == 3 and unet.info["database"]["n"] == 40
    Judge(JudgeConfig(widths=(4, 8, 8, 8), feature_dim=8)).save(tmp_path / "judge.safetensors")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "unet.safetensors"), "--judge", str(tmp_path / "judge.safetensors"),
                 "--per-class", "1", "--steps", "1", *common]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 24 and result["database"] == {"n": 40, "as_in_training": True}
    other = SceneCLIP(SceneCLIPConfig(width=16, layers=1, heads=2, embed_dim=8, image_widths=(8,)))
    other.save(tmp_path / "other.safetensors")
    assert main(["evaluate", str(tmp_path / "unet.safetensors"), "--judge", str(tmp_path / "judge.safetensors"),
                 "--per-class", "1", "--steps", "1", *common[:2], "--image-encoder",
                 str(tmp_path / "other.safetensors")]) == 2
    assert "image encoder whose fingerprint" in capsys.readouterr().err


from test_text import hub_cache  # noqa: E402,F401 (an empty Hugging Face cache, the hub's offline switch off)


def test_a_missing_clip_image_tower_says_how_to_get_it_without_the_network(hub_cache):
    with no_network(), pytest.raises(TextEncoderNotFound, match="(?s)'openai/clip-vit-base-patch32' are not on this "
                                                                "machine.*hf download openai/clip-vit-base-patch32"):
        CLIPImageEncoder.from_pretrained()  # the default: ViT-B/32, as RDM
