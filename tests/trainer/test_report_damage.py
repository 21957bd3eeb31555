"""`distill report` on a damaged metrics.jsonl: bad values and lines skipped and counted in the summary,
NaN/inf loss flagged, a file with no metrics one `distill:` line naming it."""

from __future__ import annotations

import pytest

from distill.cli import main


def _report(tmp_path, capsys, *lines: str) -> tuple[int, str, str]:
    (tmp_path / "metrics.jsonl").write_text("".join(ln + "\n" for ln in lines))
    rc = main(["report", str(tmp_path)])
    out = capsys.readouterr()
    return rc, out.out, out.err.strip()


@pytest.mark.parametrize("bad", ['"abc"', "null"])
def test_unusable_value_is_skipped_and_counted(tmp_path, capsys, bad):
    rc, out, _ = _report(tmp_path, capsys, f'{{"step": 1, "loss": {bad}}}', '{"step": 2, "loss": 2.0, "tokens": 5}')
    assert rc == 0
    assert f"1 value(s) of metrics.jsonl skipped, not numbers (first: line 1: loss = {bad})" in out
    assert "loss: 2.0000 (step 2) -> 2.0000 (step 2)" in out and "tokens: 5 " in out


@pytest.mark.parametrize(
    "bad, why", [("[1, 2]", "a JSON array, not an object"), ("not json", "not valid JSON"), ('{"loss": 1}', "step")]
)
def test_bad_line_is_skipped_and_said(tmp_path, capsys, bad, why):
    ok = '{"step": %d, "loss": 2.0, "tokens": 5}'
    rc, out, _ = _report(tmp_path, capsys, ok % 1, bad, ok % 3)
    assert rc == 0 and "steps: 3" in out and "tokens: 10 " in out
    assert f"1 line(s) of metrics.jsonl skipped (first: line 2: {why}" in out
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Skipped</h2>" in page and "1 line(s) of metrics.jsonl skipped (first: line 2: " in page


def test_nan_or_inf_loss_is_flagged(tmp_path, capsys):
    rc, out, _ = _report(
        tmp_path, capsys, '{"step": 1, "loss": 3.0}', '{"step": 2, "loss": NaN}', '{"step": 3, "loss": Infinity}'
    )
    assert rc == 0 and "loss is NaN or infinite at 2 step(s) (first: step 2)" in out
    assert "Fix: lower trainer.optim.lr" in out  # the key as the config spells it


@pytest.mark.parametrize("lines", [(), ("not json", "[1]")])
def test_no_metrics_is_one_line_naming_the_file(tmp_path, capsys, lines):
    rc, out, err = _report(tmp_path, capsys, *lines)
    assert rc == 1 and "\n" not in err and "Traceback" not in err
    assert err.startswith(f"distill: {tmp_path / 'metrics.jsonl'} holds no metrics"), err
    assert ("2 line(s) of metrics.jsonl skipped" in err) == bool(lines)
