"""Small process-supervision files in each format, made here, with the formats' odd corners:
PRM800K null ratings, a flagged step, a human completion, alternatives at a step, the
found_error / give_up / solution finish reasons, a phase-2 line whose labels stop before its
pre-generated end, one step rated by two labelers (a quality-control question); a
Math-Shepherd line whose steps contain `+`; ProcessBench with and without an error."""


def _step(*completions, chosen=0, human=None):
    return {"completions": [{"text": t, "rating": r, "flagged": f} for t, r, f in completions],
            "human_completion": human, "chosen_completion": chosen}


PROBLEM_A = "What is $2+3\\cdot 4$?"
PROBLEM_B = "Compute $10-7$."

PRM800K_ROWS = [
    # phase 1: alternatives at step 2 (one wrong, one right and chosen, one flagged and unrated)
    {"labeler": "u1", "timestamp": "2023-01-22T04:34:27", "generation": None, "is_quality_control_question": False,
     "question": {"problem": PROBLEM_A, "ground_truth_answer": "14"},
     "label": {"steps": [
         _step(("Multiplication first: $3\\cdot 4 = 12$.", 1, None)),
         _step(("Then $2 + 12 = 15$.", -1, False), ("Then $2+12 = 14$.\n\n# Answer\n\n14", 1, False),
               ("I am not sure what to add.", None, True), chosen=1)],
         "total_time": 100, "finish_reason": "solution"}},
    # phase 2: found_error at the first step; the rest of the pre-generated solution is not continued
    {"labeler": "u2", "timestamp": "2023-02-01T10:00:00", "generation": 3, "is_quality_control_question": False,
     "question": {"problem": PROBLEM_A, "ground_truth_answer": "14",
                  "pre_generated_steps": ["Add first: $2+3=5$.", "Then $5 \\cdot 4 = 20$.\n\n# Answer\n\n20"]},
     "label": {"steps": [_step(("Add first: $2+3=5$.", -1, None), chosen=None)],
               "total_time": 5, "finish_reason": "found_error"}},
    # phase 1: every completion wrong, so the labeler wrote one (human completion), then gave up
    {"labeler": "u3", "timestamp": "2023-01-23T09:00:00", "generation": None, "is_quality_control_question": False,
     "question": {"problem": PROBLEM_B, "ground_truth_answer": "3"},
     "label": {"steps": [
         _step(("$10-7=4$.", -1, None), chosen=None,
               human={"text": "$10 - 7 = 3$.", "rating": None, "source": "human", "flagged": False}),
         _step(("So it is 0.", 0, None))],
         "total_time": 50, "finish_reason": "give_up"}},
    # phase 2, a quality-control question: u1's first step rated again (0 here), then the labels stop and
    # the pre-generated solution goes on, unrated, to its answer
    {"labeler": "u4", "timestamp": "2023-02-02T10:00:00", "generation": 3, "is_quality_control_question": True,
     "question": {"problem": PROBLEM_A, "ground_truth_answer": "14",
                  "pre_generated_steps": ["Multiplication first: $3\\cdot 4 = 12$.", "So $2+12=14$.\n\n# Answer\n\n14"]},
     "label": {"steps": [_step(("Multiplication first: $3\\cdot 4 = 12$.", 0, None))],
               "total_time": 9, "finish_reason": "give_up"}},
]

MS_QUESTION = "Tom has 2 apples and buys 3 more. How many apples does he have?"
MATH_SHEPHERD_ROWS = [
    {"input": f"{MS_QUESTION} Step 1: He has 2 + 3 = <<2+3=5>>5 apples. ки\nStep 2: The answer is: 5 ки",
     "label": f"{MS_QUESTION} Step 1: He has 2 + 3 = <<2+3=5>>5 apples. +\nStep 2: The answer is: 5 +", "task": "GSM8K"},
    {"input": f"{MS_QUESTION} Step 1: He has 2 + 3 = 6 apples. ки\nStep 2: The answer is: 6 ки",
     "label": f"{MS_QUESTION} Step 1: He has 2 + 3 = 6 apples. -\nStep 2: The answer is: 6 -", "task": "GSM8K"},
    {"input": "Sam has 4 pens and loses 1. How many are left? Step 1: 4 - 1 = 2 + 1 = 3 pens. ки\n"
              "Step 2: The answer is: 3 ки",
     "label": "Sam has 4 pens and loses 1. How many are left? Step 1: 4 - 1 = 2 + 1 = 3 pens. -\n"
              "Step 2: The answer is: 3 +", "task": "GSM8K"},
]

PROCESSBENCH_ROWS = [
    {"id": "gsm8k-0", "generator": "Qwen2-7B-Instruct", "problem": "Ann reads 4 pages a day. How many in 3 days?",
     "steps": ["She reads 4 * 3 = 12 pages.", "So the answer is \\boxed{12}."], "final_answer_correct": True,
     "label": -1},
    {"id": "math-1", "generator": "Llama-3.1-8B-Instruct", "problem": "Compute $7\\cdot 6$.",
     "steps": ["$7 \\cdot 6 = 48$.", "Half of it is 24.", "So \\boxed{24}."], "final_answer_correct": False,
     "label": 0},
    {"id": "math-2", "generator": "Llama-3.1-8B-Instruct", "problem": "Compute $9-4$.",
     "steps": ["$9-4 = 5$.", "Doubling gives 10.", "So \\boxed{10}."], "final_answer_correct": False, "label": 1},
]
