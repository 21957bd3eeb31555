"""Writes the small replay inputs in this folder (deterministic; run from anywhere).

    python examples/data/make_examples.py

recording.jsonl    a distill teacher recording: 20 grade-school maths answers (two
                   samples for some prompts, one truncated, one multi-turn, rewards
                   recorded for correctness: one wrong answer has reward 0.0)
chat.jsonl         chat JSONL ({"messages": [...]}) with an id, a system prompt and a tool call
sharegpt.jsonl     ShareGPT ({"conversations": [{"from", "value"}]}), including function_call turns
batch_input.jsonl  an OpenAI Batch API input file (requests) ...
batch_output.jsonl ... and its output file (answers; one request failed)
The problems and solutions are written for these examples (not copied from a dataset).
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "teacher-model"
ENDPOINT = "https://api.example.com/v1"
SAMPLING = {"n": 2, "temperature": 0.7, "max_tokens": 384, "seed": 7}
INSTRUCTION = "Solve the problem step by step. Put the final answer after '####'."

# (question, worked solution lines, final answer)
PROBLEMS = [
    ("A baker makes 14 trays of muffins with 12 muffins on each tray. She sells 150 muffins. "
     "How many muffins are left?",
     ["She makes 14 * 12 = 168 muffins.", "After selling 150, she has 168 - 150 = 18 muffins left."], 18),
    ("Tom reads 23 pages on Monday and twice as many on Tuesday. How many pages did he read in the two days?",
     ["On Tuesday he reads 2 * 23 = 46 pages.", "In total he reads 23 + 46 = 69 pages."], 69),
    ("A bus has 40 seats. On the first stop 17 people get on, and on the second stop 9 more get on. "
     "How many seats are still empty?",
     ["There are 17 + 9 = 26 passengers.", "So 40 - 26 = 14 seats are empty."], 14),
    ("Maria buys 3 notebooks at $4 each and 2 pens at $1.50 each. She pays with a $20 bill. "
     "How much change does she get?",
     ["The notebooks cost 3 * 4 = $12.", "The pens cost 2 * 1.50 = $3.", "She spends 12 + 3 = $15.",
      "Her change is 20 - 15 = $5."], 5),
    ("A garden has 6 rows of tomato plants with 8 plants in each row. Each plant gives 5 tomatoes. "
     "How many tomatoes does the garden give?",
     ["There are 6 * 8 = 48 plants.", "They give 48 * 5 = 240 tomatoes."], 240),
    ("Leo saves $15 every week. How many weeks does he need to save $180 for a bike?",
     ["He needs 180 / 15 = 12 weeks."], 12),
    ("A school has 420 students. One third of them walk to school and 85 come by bus. "
     "The rest are driven by their parents. How many are driven?",
     ["One third walk: 420 / 3 = 140 students.", "Walking or by bus: 140 + 85 = 225 students.",
      "Driven: 420 - 225 = 195 students."], 195),
    ("A rope is 9 metres long. Sam cuts it into pieces of 75 centimetres. How many whole pieces does he get?",
     ["9 metres is 900 centimetres.", "900 / 75 = 12, so he gets 12 pieces."], 12),
    ("Anna is 4 years older than her brother. In 3 years the sum of their ages will be 30. "
     "How old is Anna now?",
     ["Let her brother be b now; Anna is b + 4.", "In 3 years: (b + 3) + (b + 7) = 30, so 2b + 10 = 30.",
      "Then b = 10 and Anna is 10 + 4 = 14."], 14),
    ("A shop sells apples in bags of 6. A restaurant needs 100 apples. How many bags must it buy?",
     ["100 / 6 = 16 with 4 left over.", "16 bags give only 96 apples, so it must buy 17 bags."], 17),
    ("A train travels at 80 km per hour for 2.5 hours. How far does it go?",
     ["Distance = 80 * 2.5 = 200 km."], 200),
    ("Priya has 56 stickers. She gives a quarter of them to her sister and then buys 10 more. "
     "How many stickers does she have now?",
     ["A quarter of 56 is 56 / 4 = 14.", "After giving them away she has 56 - 14 = 42.",
      "After buying 10 more she has 42 + 10 = 52."], 52),
    ("A farmer has chickens and cows. He counts 30 heads and 80 legs. How many cows does he have?",
     ["If all 30 were chickens there would be 30 * 2 = 60 legs.", "The extra 80 - 60 = 20 legs come "
      "from cows, 2 extra legs each.", "So there are 20 / 2 = 10 cows."], 10),
    ("A box holds 24 pencils. A teacher has 5 full boxes and 13 loose pencils. She gives 7 pencils "
     "to each of her 19 students. How many pencils are left?",
     ["She has 5 * 24 + 13 = 133 pencils.", "She gives away 19 * 7 = 133 pencils.",
      "So 133 - 133 = 0 pencils are left."], 0),
]


def answer_text(lines: list[str], final: int | str) -> str:
    return "\n".join(lines) + f"\n#### {final}"


def user_msg(q: str) -> dict:
    return {"role": "user", "content": f"{q}\n\n{INSTRUCTION}"}


def record(pid: str, idx: int, messages: list[dict], content: str, finish: str = "stop",
           reward: float | None = 1.0, t: float = 0.0, completion_tokens: int = 60) -> dict:
    return {
        "v": 1, "prompt_id": pid, "sample_index": idx, "messages": messages, "tools": None,
        "response": {"role": "assistant", "content": content, "reasoning_content": None, "tool_calls": None},
        "finish_reason": finish, "model": MODEL, "endpoint": ENDPOINT, "sampling": SAMPLING,
        "usage": {"prompt_tokens": 70, "completion_tokens": completion_tokens, "total_tokens": 70 + completion_tokens},
        "usage_shared_by": 2, "t_start": 1_760_000_000.0 + t, "t_end": 1_760_000_002.5 + t,
        "reward": reward, "request_id": f"req-{pid}-{idx // 2}",
    }


def recording() -> list[dict]:
    out = []
    t = 0.0
    for i, (q, lines, final) in enumerate(PROBLEMS):
        pid = f"gsm-{i:03d}"
        msgs = [user_msg(q)]
        out.append(record(pid, 0, msgs, answer_text(lines, final), t=t))
        if i in (0, 4, 10):  # a second sample, worded differently
            alt = ["Let me work it out."] + lines
            out.append(record(pid, 1, msgs, answer_text(alt, final), t=t + 0.1))
        if i == 6:  # a wrong second sample: the reward records it
            wrong = ["One third walk: 420 / 3 = 140 students.", "Driven: 420 - 140 = 280 students."]
            out.append(record(pid, 1, msgs, answer_text(wrong, 280), reward=0.0, t=t + 0.1))
        if i == 12:  # hit max_tokens mid-sentence
            cut = "If all 30 were chickens there would be 30 * 2 = 60 legs. The extra 80 - 60 = 20 legs come from"
            out.append(record(pid, 1, msgs, cut, finish="length", reward=None, t=t + 0.1, completion_tokens=384))
        t += 3.0
    # a multi-turn conversation: a follow-up question after the first answer
    q, lines, final = PROBLEMS[1]
    history = [user_msg(q), {"role": "assistant", "content": answer_text(lines, final)},
               {"role": "user", "content": "And if on Wednesday he reads 10 pages fewer than on Tuesday, "
                                           "how many pages has he read over the three days?"}]
    out.append(record("gsm-001-followup", 0, history, answer_text(
        ["On Wednesday he reads 46 - 10 = 36 pages.", "Over three days: 69 + 36 = 105 pages."], 105), t=t))
    return out


def chat() -> list[dict]:
    q, lines, final = PROBLEMS[5]
    tool = {"type": "function", "function": {"name": "calculator", "description": "Evaluate an arithmetic expression",
                                             "parameters": {"type": "object", "properties": {
                                                 "expression": {"type": "string"}}, "required": ["expression"]}}}
    return [
        {"id": "chat-1", "messages": [{"role": "system", "content": "You are a careful maths tutor."}, user_msg(q),
                                      {"role": "assistant", "content": answer_text(lines, final)}],
         "finish_reason": "stop"},
        {"messages": [user_msg(PROBLEMS[10][0]),
                      {"role": "assistant", "content": answer_text(PROBLEMS[10][1], PROBLEMS[10][2])}]},
        {"id": "chat-tool", "tools": [tool], "messages": [
            {"role": "user", "content": "What is 17 * 23?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0", "type": "function", "function": {
                "name": "calculator", "arguments": "{\"expression\": \"17 * 23\"}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "391"},
            {"role": "assistant", "content": "17 * 23 = 391"}]},
    ]


def sharegpt() -> list[dict]:
    q, lines, final = PROBLEMS[7]
    return [
        {"id": "sg-1", "conversations": [{"from": "human", "value": q},
                                         {"from": "gpt", "value": answer_text(lines, final)}]},
        {"id": "sg-2", "system": "You are a careful maths tutor.", "conversations": [
            {"from": "human", "value": PROBLEMS[2][0]}, {"from": "gpt", "value": answer_text(PROBLEMS[2][1], 14)},
            {"from": "human", "value": "And if 5 people get off at the third stop?"},
            {"from": "gpt", "value": "Then 26 - 5 = 21 passengers remain, so 40 - 21 = 19 seats are empty.\n#### 19"}]},
        {"id": "sg-tool", "tools": json.dumps([{"name": "calculator", "description": "Evaluate arithmetic",
                                                "parameters": {"type": "object", "properties": {
                                                    "expression": {"type": "string"}}}}]),
         "conversations": [{"from": "human", "value": "What is 12 * 12?"},
                           {"from": "function_call", "value": json.dumps(
                               {"name": "calculator", "arguments": {"expression": "12 * 12"}})},
                           {"from": "observation", "value": "144"},
                           {"from": "gpt", "value": "12 * 12 = 144"}]},
    ]


def batch() -> tuple[list[dict], list[dict]]:
    inputs, outputs = [], []
    for i in (3, 8, 11):
        q, lines, final = PROBLEMS[i]
        cid = f"req-{i}"
        inputs.append({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "gpt-4o-mini", "messages": [
                           {"role": "developer", "content": "You are a careful maths tutor."}, user_msg(q)],
                           "max_tokens": 400}})
        if i == 11:
            outputs.append({"id": f"batch_req_{i}", "custom_id": cid, "response": None, "error": {
                "code": "server_error", "message": "The server had an error processing the request."}})
            continue
        outputs.append({"id": f"batch_req_{i}", "custom_id": cid, "response": {
            "status_code": 200, "request_id": f"r{i}", "body": {
                "id": f"chatcmpl-{i}", "object": "chat.completion", "created": 1760000000, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer_text(lines, final),
                                                     "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 80, "completion_tokens": 50, "total_tokens": 130}}}, "error": None})
    outputs.reverse()  # the Batch API does not keep input order
    return inputs, outputs


def write(name: str, rows: list[dict]) -> None:
    (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    write("recording.jsonl", recording())
    write("chat.jsonl", chat())
    write("sharegpt.jsonl", sharegpt())
    bi, bo = batch()
    write("batch_input.jsonl", bi)
    write("batch_output.jsonl", bo)
    print("wrote", sorted(p.name for p in HERE.glob("*.jsonl")))
