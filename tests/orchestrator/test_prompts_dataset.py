"""Dataset prompt sources (orchestrator/prompt_tables.py): real JSONL / Parquet (pyarrow) / CSV files and a
real `datasets` cache built here (save_to_disk, and a local dataset folder read by load_dataset offline)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.rollout_helpers import FAST_RETRY, sample_ids

from distill.core.config import ConfigError, load_config
from distill.preflight import PreflightError, preflight
from orchestrator.prompt_tables import TableSourceError
from orchestrator.prompts import PromptSourceError, count_prompts, load_prompts
from support.fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[2]

ROWS = [
    {"qid": f"q{i}", "question": f"What is {i} plus {i}?", "sys": "Be brief." if i % 2 else "", "gold": str(2 * i)}
    for i in range(6)
]


def _src(tmp_path, **source):
    cfg = load_config(None, {"output_dir": str(tmp_path / "run"), "orchestrator": {"source": source}})
    return cfg, cfg.orchestrator.source


def _parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MAPPING = {"prompt": "question", "system": "sys", "id": "qid", "answer": "gold"}


@pytest.mark.parametrize("writer,name", [(_parquet, "p.parquet"), (_csv, "p.csv"), (_jsonl, "p.jsonl")])
def test_a_table_file_with_a_column_mapping(tmp_path, writer, name):
    path = writer(tmp_path / name, ROWS)
    _, src = _src(tmp_path, type="table", path=str(path), columns=MAPPING, system_prompt="Default system.")
    out = list(load_prompts(src))
    assert [p["prompt_id"] for p in out] == [r["qid"] for r in ROWS]
    assert out[0]["messages"] == [
        {"role": "system", "content": "Default system."},  # empty per-row system: the configured one
        {"role": "user", "content": "What is 0 plus 0?"},
    ]
    assert out[1]["messages"][0] == {"role": "system", "content": "Be brief."}  # the row's own wins
    assert [p["answer"] for p in out] == ["0", "2", "4", "6", "8", "10"]
    assert out[3]["metadata"]["row"] == 3 and out[3]["metadata"]["source"] == "table"
    assert count_prompts(src) == 6


def test_messages_column_from_parquet_structs_and_csv_json_text(tmp_path):
    conv = [
        {"role": "system", "content": "You add."},
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "and 2+2?"},
    ]
    rows = [{"conversation": conv, "n": 1}, {"conversation": conv[1:2], "n": 2}]
    _, src = _src(
        tmp_path, type="table", path=str(_parquet(tmp_path / "m.parquet", rows)), columns={"messages": "conversation"}
    )
    out = list(load_prompts(src))
    assert out[0]["messages"] == conv and out[1]["messages"] == conv[1:2]
    assert [p["prompt_id"] for p in out] == ["m-0", "m-1"] and out[1]["metadata"]["n"] == 2
    text_rows = [{"messages": json.dumps(conv), "id": "c1"}]
    _, src = _src(tmp_path, type="table", path=str(_csv(tmp_path / "m.csv", text_rows)), columns={"id": "id"})
    assert [p["messages"] for p in load_prompts(src)] == [conv]  # unmapped: the "messages" column is found


WEATHER = {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
CONVERT = {"name": "convert", "parameters": {"type": "object", "properties": {"amount": {"type": "number"}}}}


def test_a_tools_column_is_offered_to_the_teacher(tmp_path):
    """Parquet structs (every row's tools get every field, unset ones null), JSON text in CSV, legacy bare
    function definitions under "functions", an empty value; before, the tools went to metadata unsent."""
    as_tool = lambda f: {"type": "function", "function": f}  # noqa: E731
    rows = [
        {"prompt": "Weather in Paris?", "tools": [as_tool(WEATHER)]},
        {"prompt": "5 EUR in USD?", "tools": [as_tool(CONVERT)]},
        {"prompt": "Hi", "tools": []},
    ]
    _, src = _src(tmp_path, type="table", path=str(_parquet(tmp_path / "t.parquet", rows)))
    out = list(load_prompts(src))
    assert [p["tools"] for p in out] == [[as_tool(WEATHER)], [as_tool(CONVERT)], None]
    assert all("tools" not in p["metadata"] for p in out)
    text_rows = [{"question": "Weather?", "functions": json.dumps([WEATHER])}, {"question": "Hi", "functions": ""}]
    path = str(_csv(tmp_path / "t.csv", text_rows))
    _, src = _src(tmp_path, type="table", path=path, columns={"prompt": "question"})
    assert [p["tools"] for p in load_prompts(src)] == [[as_tool(WEATHER)], None]
    _, src = _src(tmp_path, type="table", path=path, columns={"prompt": "question", "tools": "question"})
    with pytest.raises(PromptSourceError, match="column 'question' is text that is not JSON"):
        list(load_prompts(src))


def test_shuffle_with_seed_and_limit_keep_row_ids(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"question {i}"} for i in range(50)])

    def ids(**kw):
        return [p["prompt_id"] for p in load_prompts(_src(tmp_path, type="table", path=str(path), **kw)[1])]

    assert ids(limit=3) == ["p-0", "p-1", "p-2"]
    a, b, c = ids(shuffle=True, seed=1, limit=10), ids(shuffle=True, seed=1, limit=10), ids(shuffle=True, seed=2)
    assert a == b and len(a) == 10 and a != ids(limit=10)  # same seed, same rows in the same order
    assert len(c) == 50 and sorted(c) == sorted(ids()) and c[:10] != a
    assert ids(shuffle=True, seed=1)[:10] == a  # the limit takes the head of the same permutation
    # ids are the original row numbers: the text of p-17 is row 17 whatever the order
    got = {
        p["prompt_id"]: p["messages"][-1]["content"]
        for p in load_prompts(_src(tmp_path, type="table", path=str(path), shuffle=True, seed=3)[1])
    }
    assert got["p-17"] == "question 17"


def test_a_wrong_mapping_names_the_column_and_lists_those_present_before_any_request(tmp_path):
    path = _parquet(tmp_path / "p.parquet", ROWS)
    cfg, src = _src(tmp_path, type="table", path=str(path), columns={"prompt": "questions", "id": "qid"})
    with pytest.raises(PreflightError) as e:
        preflight(cfg, "rollout")
    msg = str(e.value)
    assert "orchestrator.source.columns.prompt" in msg and "'questions'" in msg
    assert all(f"'{c}'" in msg for c in ("qid", "question", "sys", "gold"))
    with pytest.raises(TableSourceError, match="columns.prompt"):
        count_prompts(src)
    # through the rollout itself: stopped before the teacher saw anything
    from orchestrator.reconstruct import Reconstructor
    from orchestrator.scheduler import rollout

    with FaultServer() as s:
        cfg = load_config(
            None,
            {
                "output_dir": str(tmp_path / "run"),
                "orchestrator": {
                    "rollout_model": {"base_url": s.base_url, "model": "fault-teacher"},
                    "source": {"type": "table", "path": str(path), "columns": {"prompt": "questions"}},
                },
            },
        )
        with pytest.raises(PromptSourceError, match="questions"):
            rollout(cfg, tmp_path / "run", Reconstructor.__new__(Reconstructor), progress=False, backpressure=False)
        assert s.log.entries == [] and s.model_requests == 0
    assert not (tmp_path / "run").exists()


def test_no_prompt_column_and_bad_rows_are_reported_at_once(tmp_path):
    path = _csv(tmp_path / "p.csv", [{"a": "x", "b": "y"}])
    _, src = _src(tmp_path, type="table", path=str(path))
    with pytest.raises(TableSourceError, match=r"neither a \"messages\" nor a \"prompt\" column \(columns: 'a', 'b'\)"):
        count_prompts(src)
    rows = [
        {"prompt": "ok"},
        {"prompt": ""},
        {"prompt": "fine", "id": "x/y"},
        {"prompt": "dup", "id": "d"},
        {"prompt": "dup2", "id": "d"},
    ]
    _, src = _src(tmp_path, type="table", path=str(_jsonl(tmp_path / "bad.jsonl", rows)), columns={"id": "id"})
    with pytest.raises(PromptSourceError) as e:
        count_prompts(src)
    msg = str(e.value)
    assert "3 bad row(s) (2 good)" in msg and "row 1" in msg and "'x/y'" in msg and "already used by row 3" in msg


def test_a_byte_order_mark_is_read_past_and_bad_json_lines_are_all_listed(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM: its first column was named '\\ufeffid'."""
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfid,prompt\n1,hello\n2,yo\n")
    _, src = _src(tmp_path, type="table", path=str(bom), columns={"id": "id"})
    assert [p["prompt_id"] for p in load_prompts(src)] == ["1", "2"]
    table = tmp_path / "t.jsonl"
    table.write_bytes(b'\xef\xbb\xbf{"id": 1, "prompt": "a"}\nbad\n{"id": 2, "prompt": "b"}\n[1]\n{"id": 3')
    _, src = _src(tmp_path, type="table", path=str(table))
    with pytest.raises(TableSourceError) as e:
        count_prompts(src)
    lines = str(e.value).splitlines()
    assert f"3 bad line(s) in {table} (2 good)" in lines[0]
    assert [ln.strip().split(": ")[0] for ln in lines[1:]] == [f"{table}:2", f"{table}:4", f"{table}:5"]
    assert "half-written last line" in lines[3]


def test_config_union_keyed_on_type(tmp_path):
    with pytest.raises(ConfigError) as e:
        _src(tmp_path, type="table", path="x.csv", colums={"prompt": "q"})
    assert "orchestrator.source.colums" in str(e.value)  # the key path, without the union tag
    with pytest.raises(ConfigError) as e:
        _src(tmp_path, type="tabel", path="x.csv")
    assert "'table'" in str(e.value) and "'hf_dataset'" in str(e.value) and "'jsonl'" in str(e.value)
    with pytest.raises(ConfigError, match="sets both prompt"):
        _src(tmp_path, type="table", path="x.csv", columns={"prompt": "a", "messages": "b"})
    cfg, src = _src(tmp_path, dataset="gsm_symbolic", size=2)  # no type: reasoning_gym, as before
    assert src.type == "reasoning_gym"
    from distill.core.config import as_replay_source

    cfg.orchestrator.source = as_replay_source(_src(tmp_path, type="table", path="x.csv")[1])
    assert cfg.orchestrator.source.type == "replay"


# -- Hugging Face datasets, offline --------------------------------------------------------------------


def _hf_rows(split: str, n: int) -> list[dict]:
    return [{"id": f"{split}{i}", "text": f"{split} question {i}", "label": i} for i in range(n)]


def test_hf_dataset_saved_to_disk_with_splits(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(_hf_rows("train", 5)),
            "test": datasets.Dataset.from_list(_hf_rows("test", 3)),
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    cols = {"prompt": "text", "id": "id", "answer": "label"}
    _, src = _src(tmp_path, type="hf_dataset", name=str(tmp_path / "saved"), split="test", columns=cols)
    out = list(load_prompts(src))
    assert [p["prompt_id"] for p in out] == ["test0", "test1", "test2"] and out[2]["answer"] == 2
    assert out[0]["messages"] == [{"role": "user", "content": "test question 0"}]
    _, src = _src(tmp_path, type="hf_dataset", name=str(tmp_path / "saved"), split="validation", columns=cols)
    with pytest.raises(TableSourceError, match=r"no split 'validation' \(splits: 'train', 'test'\)"):
        count_prompts(src)
    cfg, _ = _src(tmp_path, type="hf_dataset", name=str(tmp_path / "saved"), columns={"prompt": "question"})
    with pytest.raises(PreflightError, match=r"column 'question' is not in dataset .*'id', 'text', 'label'"):
        preflight(cfg, "rollout")


def test_hf_load_dataset_from_a_local_folder_offline_and_a_missing_one(tmp_path):
    folder = tmp_path / "mydata"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", _hf_rows("train", 4))
    _jsonl(folder / "test.jsonl", _hf_rows("test", 2))
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from distill.core.config import load_config
from orchestrator.prompts import count_prompts, load_prompts
cfg = load_config(None, {{"orchestrator": {{"source": {{"type": "hf_dataset", "name": {str(folder)!r},
    "split": "train", "shuffle": True, "seed": 0, "limit": 3, "cache_dir": {str(tmp_path / "hfcache")!r},
    "columns": {{"prompt": "text", "id": "id"}}}}}}}})
src = cfg.orchestrator.source
print(json.dumps([count_prompts(src), [p["prompt_id"] for p in load_prompts(src)]]))
"""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    n, ids = json.loads(r.stdout.strip().splitlines()[-1])
    assert n == 3 and len(ids) == 3 and set(ids) <= {f"train{i}" for i in range(4)}
    assert (tmp_path / "hfcache").is_dir()  # built into the given datasets cache, offline
    _, src = _src(tmp_path, type="hf_dataset", name="no-such-org/no-such-dataset", columns={"prompt": "text"})
    with pytest.raises(TableSourceError) as e:
        count_prompts(src)
    assert "orchestrator.source.name" in str(e.value) and "datasets.load_dataset('no-such-org/no-such-dataset')" in str(
        e.value
    )


def test_rollout_from_a_parquet_table_and_resume(tmp_path, smol_tokenizer):
    from orchestrator.reconstruct import Reconstructor
    from orchestrator.scheduler import rollout

    path = _parquet(tmp_path / "p.parquet", ROWS)
    with FaultServer() as s:
        cfg = load_config(
            None,
            {
                "orchestrator": {
                    "rollout_model": {"base_url": s.base_url, "model": "fault-teacher"},
                    "source": {
                        "type": "table",
                        "path": str(path),
                        "columns": MAPPING,
                        "shuffle": True,
                        "seed": 5,
                        "limit": 4,
                    },
                    "sampling": {"n": 2},
                    "retry": FAST_RETRY,
                },
                "trainer": {"seq_len": 512},
            },
        )
        recon = Reconstructor(smol_tokenizer, cfg.orchestrator.reconstruction)
        summary = rollout(cfg, tmp_path / "run", recon, progress=False, backpressure=False)
        first = len(s.log.entries)
        again = rollout(cfg, tmp_path / "run", recon, progress=False, backpressure=False)
        assert len(s.log.entries) == first == 4  # a rerun resumes: the same ids, nothing asked again
    assert summary["samples"] == 8 and again["requests"] == 4
    ids = {i.split("/")[0] for i in sample_ids(tmp_path / "run")}
    assert len(ids) == 4 and ids <= {r["qid"] for r in ROWS}
    sent = [e["messages"] for e in s.log.entries]
    assert all(m[-1]["role"] == "user" and m[-1]["content"].startswith("What is") for m in sent)


def test_hf_dataset_by_hub_id_from_a_cache_laid_out_as_datasets_does(tmp_path):
    """A hub id resolves offline from a `datasets` cache: <cache>/<org>___<name>/<config>/<version>/<hash>/
    with dataset_info.json and <name>-<split>.arrow, as load_dataset leaves it after a download (built
    here from a local JSON build, so no hub is needed)."""
    import shutil

    import datasets

    cache = tmp_path / "hfcache"
    data = _jsonl(tmp_path / "rows.jsonl", _hf_rows("train", 3))
    datasets.load_dataset("json", data_files={"train": str(data)}, cache_dir=str(cache))
    built = next((cache / "json").glob("*/*/*"))
    target = cache / "acme___questions" / "default" / "0.0.0" / built.name
    shutil.copytree(built, target)
    (target / "json-train.arrow").rename(target / "questions-train.arrow")
    cols = {"prompt": "text", "id": "id"}
    _, src = _src(tmp_path, type="hf_dataset", name="acme/questions", cache_dir=str(cache), columns=cols)
    assert [p["prompt_id"] for p in load_prompts(src)] == ["train0", "train1", "train2"]
    assert count_prompts(src) == 3


def test_cli_wrong_mapping_is_one_message_and_writes_nothing(tmp_path):
    path = _parquet(tmp_path / "p.parquet", ROWS)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        f'output_dir = "{tmp_path / "run"}"\n[orchestrator.source]\ntype = "table"\npath = "{path}"\n'
        'columns = {prompt = "q", id = "qid"}\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "distill", "rollout", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "orchestrator.source.columns.prompt: column 'q' is not in" in r.stderr and "'question'" in r.stderr
    assert not (tmp_path / "run").exists()
