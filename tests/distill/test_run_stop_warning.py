"""`distill run` warns when the student's generation_config.json does not list the next-role tokens a GLM-4
template's turns are trained to end with (orchestrator/reconstruction/next_role.py): the file read is the
model folder's (student.path: what generate and vLLM read), not the tokenizer folder's, where
student.tokenizer names another folder."""

from __future__ import annotations

import json

from support.family_standins import standin_or_skip

from distill.core.config import RunConfig
from distill.run import make_reconstructor


def test_the_warning_reads_the_model_folders_generation_config(tmp_path, capsys):
    tok = standin_or_skip("glm4_6")
    model, tokenizer = tmp_path / "model", tmp_path / "tokenizer"
    tok.save_pretrained(tokenizer)
    model.mkdir()
    ids = tok.convert_tokens_to_ids(["<|user|>", "<|observation|>"])
    cfg = RunConfig(student={"path": str(model), "tokenizer": str(tokenizer)})
    for in_model, in_tokenizer, warned in ((ids[:1], ids, True), (ids, ids[:1], False), (None, ids, True)):
        for folder, eos in ((model, in_model), (tokenizer, in_tokenizer)):
            (folder / "generation_config.json").unlink(missing_ok=True)
            if eos is not None:
                (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}), encoding="utf-8")
        make_reconstructor(cfg, tok)
        err = capsys.readouterr().err
        assert ("warning" in err) == warned, (in_model, in_tokenizer, err)
        if warned:
            assert str(model / "generation_config.json") in err
            assert ("does not exist" if in_model is None else "does not list <|observation|>") in err
