"""TextEncoder: packaged MiniLM offline, any local HF encoder folder, masked pooling, cache, frozen."""
import pytest
import torch

from conftest import text_encoder
from mmaif_pl.errors import UserError
from mmaif_pl.models.text import TextEncoder, minilm_path


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder()


def test_minilm_shapes_mask_and_pooling(minilm):
    prompts = ["Remove the rain and the noise.", "Fuse.", "Remove the rain and the noise."]
    pooled, tokens, mask = minilm(prompts)
    assert minilm.dim == 384 and pooled.shape == (3, 384)
    assert tokens.shape[:2] == mask.shape and tokens.shape[2] == 384
    assert mask[1].sum() < mask[0].sum() and mask[0].all()
    manual = tokens[1, mask[1]].mean(0)
    torch.testing.assert_close(pooled[1], manual)
    torch.testing.assert_close(pooled[0], pooled[2])
    assert (tokens[1, ~mask[1]] == 0).all()


def test_minilm_is_frozen_and_meaningful(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.model.training
    p, _, _ = minilm(["The image is hazy.", "Haze covers the picture.", "Heavy motion blur everywhere."])
    cos = torch.nn.functional.cosine_similarity
    assert cos(p[0], p[1], dim=0) > cos(p[0], p[2], dim=0)  # paraphrases sit closer than other degradations


def test_cache_encodes_each_prompt_once(minilm, monkeypatch):
    calls = []
    orig = minilm._encode_new
    monkeypatch.setattr(minilm, "_encode_new", lambda ps: (calls.append(list(ps)), orig(ps)))
    minilm(["a new prompt for the cache test", "another one"])
    minilm(["another one", "a new prompt for the cache test"])
    assert calls == [["a new prompt for the cache test", "another one"]]


def test_cache_holds_each_prompts_own_states(minilm):
    """New prompts are encoded in one batch and cut per prompt on the host: each entry is the encoder's output
    for that prompt alone (its real tokens only) and owns its memory (not a view keeping the batch alive)."""
    prompts = ["Remove the heavy rain streaks from the visible image, please.", "Fuse.", "Dehaze it."]
    minilm(prompts)
    for p in prompts:
        ids = minilm.tokenizer([p], return_tensors="pt")
        alone = minilm.model(**ids).last_hidden_state[0]
        entry = minilm._cache[p]
        assert entry.shape == alone.shape and entry._base is None and entry.device.type == "cpu"
        torch.testing.assert_close(entry, alone, rtol=1e-4, atol=1e-5)


def test_cache_keeps_the_most_recently_used_prompts_up_to_its_size():
    """A bounded cache (training prompts keep being new, and an unbounded one grew with every one of them): the least
    recently used prompt goes first, this batch's prompts stay, and a prompt encoded again has its own states."""
    enc = TextEncoder(cache_size=3)
    first = enc(["Remove the haze.", "Denoise it.", "Fuse."])
    enc(["Remove the haze."])  # used again: now the most recent
    enc(["Brighten the dark source."])  # one over the size: "Denoise it." is the least recently used
    assert list(enc._cache) == ["Fuse.", "Remove the haze.", "Brighten the dark source."]
    calls = []
    orig = enc._encode_new
    enc._encode_new = lambda ps: (calls.append(list(ps)), orig(ps))
    again = enc(["Remove the haze.", "Denoise it.", "Fuse."])
    assert calls == [["Denoise it."]] and len(enc._cache) == 3
    for x, y in zip(first, again):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    # a batch of more new prompts than the cache holds is encoded whole; the cache keeps its last ones
    prompts = [f"Prompt number {k}." for k in range(5)]
    pooled, _, _ = enc(prompts)
    assert pooled.shape[0] == 5 and list(enc._cache) == prompts[2:]
    with pytest.raises(UserError, match="cache_size must be at least 1"):
        TextEncoder(cache_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_text_encoder_on_the_gpu_matches_the_cpu():
    """On a GPU the states come back in one copy and go out from pinned memory without a host sync: the same
    embeddings as on the CPU."""
    prompts = ["Remove the noise.", "The visible image is hazy and dark, please fix both."]
    cpu = text_encoder()(prompts)
    gpu = text_encoder().cuda()(prompts, device=torch.device("cuda"))
    for c, g in zip(cpu, gpu):
        assert g.device.type == "cuda"
        torch.testing.assert_close(g.cpu(), c, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_text_encoder_on_the_gpu_does_not_wait_for_queued_work():
    """New prompts are encoded on the encoder's own stream: the host has their states while the GPU is still busy
    with work queued before (in training: the previous step's backward). On the step's stream the copy back, and
    transformers' own `padding_mask.all()`, waited for all of it, so the host could not run ahead of the GPU."""
    cuda = torch.device("cuda")
    prompts = ["A prompt it has not seen.", "And another, longer prompt that it has not seen either."]
    enc = text_encoder().cuda()
    enc(prompts, device=cuda)  # warm: kernels, the stream, pinned buffers of these sizes
    enc._cache.clear()
    torch.cuda.synchronize()
    torch.cuda._sleep(int(4e9))  # about two seconds of queued work on the current stream
    pooled, tokens, mask = enc(prompts, device=cuda)
    assert not torch.cuda.current_stream().query(), "the encoder returned only after the queued work had ended"
    torch.cuda.synchronize()
    for gpu, cpu in zip((pooled, tokens, mask), text_encoder()(prompts)):
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4)


def test_truncation_at_max_length():
    enc = TextEncoder(max_length=8)
    _, tokens, mask = enc(["word " * 50])
    assert tokens.shape[1] == 8 and mask.all()


def test_any_local_t5_encoder_folder(tmp_path):
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    cfg = T5Config(vocab_size=tok.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    T5EncoderModel(cfg).save_pretrained(tmp_path / "t5")
    tok.save_pretrained(tmp_path / "t5")
    enc = TextEncoder(str(tmp_path / "t5"))
    pooled, tokens, mask = enc(["Remove the haze.", "Denoise both sources, please."])
    assert enc.dim == 32 and pooled.shape == (2, 32) and tokens.shape[-1] == 32
    assert enc.identity()["encoder"] == str(tmp_path / "t5")


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        TextEncoder(str(tmp_path / "nope"))


def test_real_tokens_cuts_each_row_as_boolean_indexing_does():
    """The cache's per-prompt cut (a slice per row where a tokenizer padded one side) gives what hidden[i][mask[i]]
    gives, right- or left-padded, for an empty row, and (by that indexing) for a mask with holes; every entry owns
    its memory."""
    from mmaif_pl.models.text import real_tokens

    hidden = torch.randn(4, 6, 5)
    right = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    left = right.flip(1)
    holes = torch.tensor([[1, 0, 1, 0, 0, 0]] + right[1:].tolist())
    for mask in (right, left, holes):
        cut = real_tokens(hidden, mask)
        assert len(cut) == 4
        for row, states, m in zip(hidden, cut, mask.bool()):
            assert torch.equal(states, row[m]) and states._base is None
    assert [c.shape[0] for c in real_tokens(hidden, left)] == [3, 6, 0, 1]


def test_a_left_padding_tokenizers_entries_are_its_real_tokens(monkeypatch):
    """With a tokenizer that pads on the left, each cache entry is the batch's row at its real tokens (the run at
    the right end), as boolean indexing cuts it."""
    prompts = ["Remove the heavy rain streaks from the visible image, please.", "Fuse it."]
    enc = TextEncoder()
    monkeypatch.setattr(enc.tokenizer, "padding_side", "left")
    hidden, mask = enc._run_encoder(prompts)
    assert not mask[1, 0] and mask[1, -1]  # padded on the left indeed
    enc(prompts)
    for p, row, m in zip(prompts, hidden, mask.bool()):
        torch.testing.assert_close(enc._cache[p], row[m])
