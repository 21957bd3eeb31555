"""The score server's own shapes that no kind of this branch reads (vLLM's prompt_logprobs, generation with
ids as tokens, the refusals), checked against the model directly so the vLLM kind can rely on it for
fault tests."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from support.score_helpers import MODEL, post


def completions(srv, **body) -> dict:
    return post(srv.base_url + "/completions", {"model": MODEL, **body})


def test_vllm_prompt_logprobs_keyed_by_token_id(score_server, exact_model):
    seqs = [exact_model.encode("The capital of France is Paris."), exact_model.encode("One, two, three.")]
    d = completions(score_server, prompt=seqs, prompt_logprobs=2, max_tokens=1, return_token_ids=True)
    assert [c["index"] for c in d["choices"]] == [0, 1]
    for ids, c in zip(seqs, d["choices"]):
        assert c["prompt_token_ids"] == ids and len(c["prompt_logprobs"]) == len(ids)
        assert c["prompt_logprobs"][0] is None
        rows, want = exact_model.rows(ids), exact_model.direct(ids)
        for i in range(1, len(ids)):
            e = c["prompt_logprobs"][i]
            top = torch.topk(rows[i - 1], 2).indices.tolist()
            assert list(e)[:2] == [str(t) for t in top]  # the top-k first (rank order), the scored token after
            assert abs(e[str(ids[i])]["logprob"] - want[i]) < 1e-6
            assert e[str(ids[i])]["rank"] == int((rows[i - 1] > rows[i - 1, ids[i]]).sum()) + 1
            assert e[str(ids[i])]["decoded_token"] == exact_model.piece(ids[i])
    assert d["usage"]["prompt_tokens"] == sum(map(len, seqs)) and d["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("kind", ["missing", "short", "nan", "ids", "topk"])
def test_vllm_shape_faults(make_score_server, exact_model, kind):
    srv = make_score_server(malformed=kind)
    ids = exact_model.encode("The capital of France is Paris.")
    c = completions(srv, prompt=ids, prompt_logprobs=1, max_tokens=1)["choices"][0]
    pl = c.get("prompt_logprobs")
    if kind == "missing":
        assert pl is None
    elif kind == "short":
        assert len(pl) == len(ids) - 1
    elif kind == "nan":
        assert any(v["logprob"] != v["logprob"] for v in pl[1].values())
    elif kind == "ids":
        assert str(ids[1]) not in pl[1]
    else:
        assert pl[1] == "bad"


def test_generation_with_logprobs_and_ids_as_tokens(score_server, exact_model):
    ids = exact_model.encode("The capital of France is")
    gen, lps, _ = exact_model.generate(ids, 4, 2)
    lp = completions(score_server, prompt=ids, max_tokens=4, logprobs=2, return_tokens_as_token_ids=True)["choices"][0][
        "logprobs"
    ]
    assert lp["tokens"] == [f"token_id:{t}" for t in gen]
    assert max(abs(a - b) for a, b in zip(lp["token_logprobs"], lps)) < 1e-6
    assert all(f"token_id:{t}" in d for t, d in zip(gen, lp["top_logprobs"]))


@pytest.mark.parametrize(
    "body, status",
    [
        ({"model": "other", "prompt": "hi"}, 404),
        ({"model": MODEL, "prompt": "hi", "logprobs": 21}, 400),
        ({"model": MODEL, "prompt": [[]]}, 400),
    ],
)
def test_refusals(score_server, body, status):
    with pytest.raises(urllib.error.HTTPError) as e:
        post(score_server.base_url + "/completions", body)
    assert e.value.code == status


def test_models_list(score_server):
    import json
    import urllib.request

    with urllib.request.urlopen(score_server.base_url + "/models") as r:
        assert [m["id"] for m in json.loads(r.read())["data"]] == [MODEL]
