"""The entity-name trie against brute force over real names tokenized by the real SmolLM2 tokenizer."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gemel.config import load_params
from gemel.generation.kb_trie import EntityTrie, build_entity_trie, load_backend_tokenizer, token_ids
from gemel.generation.llm import answer_ids, get_spec, load_tokenizer, start_ids
from gemel.generation.trie import Trie, TrieError

SHARED_DATA = Path(os.environ.get("GEMEL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# Names where one is a prefix of another (EOS and a continuation both allowed after "Jordan"),
# names sharing long prefixes, non-ASCII, and a duplicate name with a second id.
HANDMADE = [
    ("Q1", "Jordan"), ("Q2", "Jordan River"), ("Q3", "Jordan Peterson"), ("Q4", "Michael Jordan"),
    ("Q5", "Paris"), ("Q6", "Paris Hilton"), ("Q7", "Paris, Texas"), ("Q8", "São Paulo"),
    ("Q9", "Zürich"), ("Q10", "Jordan"), ("Q11", "New York"), ("Q12", "New York City"),
]


@pytest.fixture(scope="session")
def smollm2():
    return load_tokenizer(get_spec(load_params()["llms"], "smollm2-135m"))


@pytest.fixture(scope="session")
def kb() -> list[tuple[str, str]]:
    """The handmade names, then 300 real RichpediaMEL names when the shared data is here."""
    path = SHARED_DATA / "richpedia-mel" / "qid2ne.json"
    real = list(json.loads(path.read_text(encoding="utf-8")).items())[:300] if path.is_file() else []
    return HANDMADE + real


@pytest.fixture(scope="session")
def entity_trie(kb, smollm2) -> EntityTrie:
    return build_entity_trie([n for _, n in kb], [q for q, _ in kb], smollm2, "smollm2-135m")


@pytest.fixture(scope="session")
def sequences(kb, smollm2) -> list[list[int]]:
    return [answer_ids(smollm2, name) for _, name in kb]


def brute_next(sequences: list[list[int]], prefix: list[int]) -> list[int]:
    n = len(prefix)
    return sorted({s[n] for s in sequences if len(s) > n and s[:n] == prefix})


def all_prefixes(sequences: list[list[int]]) -> list[list[int]]:
    return sorted({tuple(s[:i]) for s in sequences for i in range(len(s) + 1)})  # type: ignore[misc]


def non_prefixes(sequences: list[list[int]], vocab: int, k: int = 200) -> list[list[int]]:
    """Prefixes with one wrong token appended, and random sequences; all absent from the trie."""
    rng = random.Random(0)
    out = []
    for _ in range(k):
        s = rng.choice(sequences)
        p = s[:rng.randrange(len(s) + 1)]
        allowed = set(brute_next(sequences, p))
        wrong = next(t for t in iter(lambda: rng.randrange(vocab), None) if t not in allowed)
        out.append(p + [wrong])
        out.append([rng.randrange(vocab) for _ in range(rng.randint(2, 6))])
    return [p for p in out if not brute_next(sequences, p)]


def test_batched_tokenization_is_answer_ids(entity_trie, sequences):
    # build_entity_trie tokenizes in batches; every name must still be exactly answer_ids(name).
    for i, s in enumerate(sequences):
        node = entity_trie.trie.node_of(s)
        assert node >= 0, f"name {i} not in the trie"
        assert entity_trie.trie.value(node) == sequences.index(s)


def test_allowed_next_matches_brute_force(entity_trie, sequences, smollm2):
    trie = entity_trie.trie
    prefixes = all_prefixes(sequences)
    assert len(prefixes) > len(sequences)
    for p in prefixes:
        got = trie.allowed_next(list(p))
        assert got.tolist() == brute_next(sequences, list(p)), p
        assert np.all(np.diff(got) > 0)
    for p in non_prefixes(sequences, len(smollm2)):
        assert trie.allowed_next(p).size == 0


def test_prefix_name_allows_eos_and_continuation(entity_trie, smollm2):
    eos = smollm2.eos_token_id
    jordan = answer_ids(smollm2, "Jordan")[:-1]
    allowed = entity_trie.trie.allowed_next(jordan).tolist()
    assert eos in allowed
    assert answer_ids(smollm2, "Jordan River")[len(jordan)] in allowed
    assert entity_trie.trie.allowed_next(jordan + [eos]).size == 0  # complete


def test_values_map_back_to_entities(entity_trie, kb, sequences):
    first = {}
    for i, s in enumerate(sequences):
        first.setdefault(tuple(s), i)
    for s in sequences:
        value = entity_trie.trie.value(entity_trie.trie.node_of(s))
        assert (entity_trie.entity_ids[value], entity_trie.names[value]) == kb[first[tuple(s)]]
    value = entity_trie.trie.value(entity_trie.trie.node_of(sequences[9]))  # the second "Jordan" (Q10)
    assert (entity_trie.entity_ids[value], entity_trie.names[value]) == ("Q1", "Jordan")
    assert entity_trie.duplicates == len(sequences) - len(first) >= 1
    # Inner nodes carry no entity.
    assert entity_trie.trie.value(entity_trie.trie.node_of(sequences[0][:-1])) == -1


def test_batched_calls_agree_with_allowed_next(entity_trie, sequences, smollm2):
    trie, vocab = entity_trie.trie, len(smollm2)
    prefixes = all_prefixes(sequences)
    nodes = np.array([trie.node_of(list(p)) for p in prefixes] + [-1])
    mask = trie.allowed_mask(torch.from_numpy(nodes), vocab)
    assert mask.shape == (len(nodes), vocab) and mask.dtype == torch.bool
    expected = torch.zeros_like(mask)
    for row, p in enumerate(prefixes):
        expected[row, torch.from_numpy(trie.allowed_next(list(p)).astype(np.int64))] = True
    assert torch.equal(mask, expected)  # the last row, node -1, is all False
    with pytest.raises(ValueError, match="vocabulary"):
        trie.allowed_mask(nodes, trie.max_token)


def test_save_load_round_trip(entity_trie, sequences, tmp_path):
    path = tmp_path / "sub" / "trie.npz"
    entity_trie.save(path)
    # The atomic writer's temporary file (`.trie.npz.<hex>.tmp.npz`) is gone: only the trie is left.
    assert [p.name for p in path.parent.iterdir()] == ["trie.npz"]
    with np.load(path, allow_pickle=False) as z:
        for name, array in entity_trie.trie.arrays().items():
            assert np.array_equal(z[name], array) and z[name].dtype == array.dtype
    loaded = EntityTrie.load(path)
    assert (loaded.llm, loaded.eos_id) == ("smollm2-135m", entity_trie.eos_id)
    assert loaded.names.tolist() == entity_trie.names.tolist()
    assert loaded.entity_ids.tolist() == entity_trie.entity_ids.tolist()
    for p in all_prefixes(sequences)[::7]:
        assert np.array_equal(loaded.trie.allowed_next(list(p)), entity_trie.trie.allowed_next(list(p)))
    # The bare Trie reads the same file; a file that is not a trie is a clear error.
    assert Trie.load(path).num_nodes == entity_trie.trie.num_nodes
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(TrieError, match="format"):
        Trie.load(tmp_path / "other.npz")
    with pytest.raises(TrieError, match="no such file"):
        EntityTrie.load(tmp_path / "missing.npz")


def test_generic_build_against_brute_force():
    # Small vocabulary: heavy prefix sharing, sequences that are prefixes of others (no EOS),
    # exact duplicates and the empty sequence (value at the root).
    rng = random.Random(1)
    seqs = [[rng.randrange(4) for _ in range(rng.randint(0, 6))] for _ in range(400)]
    trie = Trie.build(seqs)
    for p in all_prefixes(seqs):
        assert trie.allowed_next(list(p)).tolist() == brute_next(seqs, list(p))
        first = next((i for i, s in enumerate(seqs) if s == list(p)), -1)
        assert trie.value(trie.node_of(list(p))) == first
    assert trie.max_depth() == max(map(len, seqs))
    assert trie.num_nodes == len(all_prefixes(seqs))
    assert Trie.build([]).allowed_next([]).size == 0


def test_bad_names_are_named(smollm2):
    with pytest.raises(TrieError, match="Q2"):
        build_entity_trie(["Paris", " "], ["Q1", "Q2"], smollm2, "smollm2-135m")


def bos_tokenizer(bos: str, eos: str):
    """A word-level tokenizer over the handmade names' words that puts `bos` before every text,
    as Gemma's and Llama's do; bos == eos is OPT's case (its BOS is </s>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    words = sorted({w for _, name in HANDMADE for w, _ in split.pre_tokenize_str(name)})
    specials = list(dict.fromkeys(["<unk>", bos, eos]))
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = split
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>")


@pytest.mark.parametrize("bos, eos", [("<s>", "</s>"), ("</s>", "</s>")])
def test_trie_of_a_tokenizer_that_adds_bos(bos: str, eos: str):
    """Every name's sequence is its tokens without special tokens, then EOS: the BOS the tokenizer
    puts before a text never starts a name, whether it differs from EOS (Gemma, Llama) or is EOS
    (OPT). Checked against the plain definition, not against answer_ids."""
    tok = bos_tokenizer(bos, eos)
    assert start_ids(tok) == [tok.bos_token_id]  # the tokenizer does add it to a text
    names = [n for _, n in HANDMADE]
    expected = [tok(n, add_special_tokens=False).input_ids + [tok.eos_token_id] for n in names]
    assert all(tok(n).input_ids[0] == tok.bos_token_id for n in names)
    assert all(tok.unk_token_id not in s for s in expected)
    for batch_size in (1, 5, 10_000):
        et = build_entity_trie(names, [q for q, _ in HANDMADE], tok, "bos-test", batch_size=batch_size)
        assert et.eos_id == tok.eos_token_id
        for p in all_prefixes(expected):
            assert et.trie.allowed_next(list(p)).tolist() == brute_next(expected, list(p)), p
        for i, s in enumerate(expected):
            assert et.trie.value(et.trie.node_of(s)) == expected.index(s), names[i]
            assert answer_ids(tok, names[i]) == s  # what training targets, what decoding can reach
        assert tok.eos_token_id not in et.trie.allowed_next([]).tolist()
        if bos != eos:
            assert tok.bos_token_id not in et.trie.child_tok.tolist()
        else:  # the one EOS of a sequence is its last token: after it, nothing
            eos_nodes = et.trie.child_node[et.trie.child_tok == tok.eos_token_id]
            assert len(eos_nodes) == len({tuple(s) for s in expected})  # one per distinct name: never vacuous
            assert all(et.trie.value(int(n)) >= 0 and not len(et.trie.children(int(n))[0]) for n in eos_nodes)


def test_build_batch_size_changes_nothing(kb, smollm2):
    names, ids = [n for _, n in kb], [q for q, _ in kb]
    arrays = [build_entity_trie(names, ids, smollm2, "smollm2-135m", batch_size=b).trie.arrays() for b in (1, 7, 10_000)]
    for other in arrays[1:]:
        assert all(np.array_equal(other[k], arrays[0][k]) and other[k].dtype == arrays[0][k].dtype for k in other)


@pytest.mark.skipif(os.environ.get("GEMEL_SLOW_TESTS") != "1",
                    reason="Gemma3's tokenizer takes ~15 s to load; set GEMEL_SLOW_TESTS=1")
def test_gemma3_trie_has_no_bos(kb):
    tok = load_tokenizer(get_spec(load_params()["llms"], "gemma3-270m"))
    assert start_ids(tok)  # Gemma puts a BOS before texts; answers must not start with it
    names = [n for _, n in kb]
    et = build_entity_trie(names, [q for q, _ in kb], tok, "gemma3-270m")
    seqs = [answer_ids(tok, n) for n in names]
    assert tok.bos_token_id not in et.trie.allowed_next([]).tolist()
    for p in all_prefixes(seqs)[::5]:
        assert et.trie.allowed_next(list(p)).tolist() == brute_next(seqs, list(p))
    assert et.eos_id == tok.eos_token_id
    backend = load_backend_tokenizer(load_params()["llms"], "gemma3-270m")
    assert token_ids(backend, names) == token_ids(tok, names) and backend.eos_token_id == tok.eos_token_id


def test_backend_tokenizer_is_the_tokenizer(kb, smollm2):
    """The trie stage's tokenizer, loaded in a child interpreter and handed back as its Rust backend
    (so the stage never imports torch), tokenizes every name as the LLM's own tokenizer does."""
    backend = load_backend_tokenizer(load_params()["llms"], "smollm2-135m")
    assert type(backend).__name__ == "BackendTokenizer" and backend.eos_token_id == smollm2.eos_token_id
    names = [n for _, n in kb]
    assert token_ids(backend, names) == [smollm2(n, add_special_tokens=False).input_ids for n in names]
    one = build_entity_trie(names, [q for q, _ in kb], backend, "smollm2-135m")
    two = build_entity_trie(names, [q for q, _ in kb], smollm2, "smollm2-135m")
    for k, a in one.trie.arrays().items():
        assert np.array_equal(a, two.trie.arrays()[k]), k
    with pytest.raises(TrieError, match="unknown LLM 'no-such-llm'"):
        load_backend_tokenizer(load_params()["llms"], "no-such-llm")


def test_stage_does_not_import_torch(tmp_path):
    """torch and transformers are 0.75 GiB of resident memory: the trie stage, whose budget at 7.4M
    names is 2 GB, must run without them (its tokenizer comes from a child interpreter)."""
    import subprocess
    import sys

    import pandas as pd

    from gemel.data.tables import KB, write_parquet_atomic

    names = pd.DataFrame({"entity_id": [q for q, _ in HANDMADE], "name": [n for _, n in HANDMADE], "description": None})
    write_parquet_atomic(names, tmp_path / "prepared" / "kb.parquet", KB)
    code = ("import sys; from stages import trie; rc = trie.main(sys.argv[1:]); "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "--set", f"prepare.out={tmp_path / 'prepared'}",
                           "--set", f"trie.out={tmp_path / 'tries'}"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert EntityTrie.load(tmp_path / "tries" / "smollm2-135m.npz").names.tolist() == [n for _, n in HANDMADE]


def test_stage_writes_a_loadable_trie(tmp_path, kb, capsys):
    import pandas as pd

    from gemel.data.tables import KB, write_parquet_atomic
    from stages import _cli
    from stages import trie as stage

    names = pd.DataFrame({"entity_id": [q for q, _ in HANDMADE], "name": [n for _, n in HANDMADE], "description": None})
    write_parquet_atomic(names, tmp_path / "prepared" / "kb.parquet", KB)
    argv = ["--set", f"prepare.out={tmp_path / 'prepared'}", "--set", f"trie.out={tmp_path / 'tries'}"]
    assert stage.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    path = tmp_path / "tries" / "smollm2-135m.npz"  # one trie per LLM and KB, shared by its runs
    assert report["out"] == str(path) and report["file_bytes"] == path.stat().st_size
    assert (report["names"], report["duplicate_names"]) == (len(HANDMADE), 1)
    loaded = EntityTrie.load(path)
    assert loaded.llm == "smollm2-135m" and (loaded.entity_ids[0], loaded.names[0]) == ("Q1", "Jordan")
    # Known errors are one line and exit 2: no KB yet, an unknown LLM.
    assert _cli.run("trie", stage.main, ["--set", f"prepare.out={tmp_path / 'none'}"]) == 2
    assert _cli.run("trie", stage.main, argv + ["--set", "model.llm=no-such-llm"]) == 2
    assert "unknown LLM" in capsys.readouterr().err


def test_forked_tokenizers_build_the_same_trie(kb, smollm2):
    """The trie stage tokenizes millions of names in a forked process per core; spans of names come
    back in order, so the trie, names and ids are those of one process, whatever the split."""
    import pyarrow as pa
    names, ids = [n for _, n in kb], [q for q, _ in kb]
    one = build_entity_trie(names, ids, smollm2, "smollm2-135m", batch_size=4, workers=1)
    two = build_entity_trie(pa.array(names), pa.array(ids), smollm2, "smollm2-135m", batch_size=4, workers=2)
    assert len(names) > 8  # several spans, so the order of their return is tested
    for k, a in one.trie.arrays().items():
        assert np.array_equal(a, two.trie.arrays()[k]), k
    assert two.names.tolist() == names and two.entity_ids.tolist() == ids
    assert [two.trie.value(two.trie.node_of(answer_ids(smollm2, n))) for n in names[:5]] == [0, 1, 2, 3, 4]
