"""The paper's published figures, as data, each with the table it comes from.

Source: Kuckreja, Gupta, Khan, Dhall, "Pixels Don't Lie (But Your Detector Might): Bootstrapping
MLLM-as-a-Judge for Trustworthy Deepfake Detection and Reasoning Supervision", CVPR 2026; the
figures of its project page, section "Benchmark Results", transcribed table by table. The page
names tables by heading, not number, so the heading is the table's name here. Percentages are
stored as fractions (the page's 96.2 is 0.962) so they compare directly with our figures; a
figure the page does not give is absent, never zero. Changing a figure here is a reviewed change:
tests pin a few of them.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = ("Kuckreja et al., \"Pixels Don't Lie (But Your Detector Might): Bootstrapping MLLM-as-a-Judge for "
         "Trustworthy Deepfake Detection and Reasoning Supervision\", CVPR 2026")


@dataclass(frozen=True)
class PaperTable:
    key: str
    title: str  # the table's heading in the paper's results
    dataset: str
    metrics: tuple[str, ...]
    rows: dict[str, dict[str, float]]  # model -> metric -> value
    note: str = ""

    @property
    def source(self) -> str:
        return f"{PAPER}, results table \"{self.title}\""


# Metric keys: rmse, pearson (pointwise); accuracy (pairwise); real_f1, fake_f1, accuracy
# (detection); bleu3, bertscore, dfj_score (reasoning).
TABLES: dict[str, PaperTable] = {t.key: t for t in (
    PaperTable(
        "pointwise-dfj-meta", "Pointwise Evaluation: DFJ-Meta", "dfj-meta/pointwise/test", ("rmse", "pearson"),
        {
            "Gemini-2.5": {"rmse": 1.09, "pearson": 0.83},
            "GPT-4o-mini": {"rmse": 0.78, "pearson": 0.87},
            "Qwen-3-VL-235B": {"rmse": 1.10, "pearson": 0.82},
            "DeepfakeJudge-3B": {"rmse": 0.69, "pearson": 0.92},
            "DeepfakeJudge-7B": {"rmse": 0.61, "pearson": 0.93},
        },
    ),
    PaperTable(
        "pointwise-dfj-meta-human", "Pointwise Evaluation: DFJ-Meta-Human", "dfj-meta-human/pointwise",
        ("rmse", "pearson"),
        {
            "GPT-4o-mini": {"rmse": 0.81, "pearson": 0.86},
            "Qwen-235B-Thinking": {"rmse": 0.95, "pearson": 0.86},
            "DeepfakeJudge-7B": {"rmse": 0.50, "pearson": 0.95},
        },
        note="the paper gives no DeepfakeJudge-3B row for this set",
    ),
    PaperTable(
        "pairwise-dfj-meta", "Pairwise Evaluation (DFJ-Meta column)", "dfj-meta/pairwise/test", ("accuracy",),
        {
            "Gemini-2.5": {"accuracy": 0.917},
            "GPT-4o-mini": {"accuracy": 0.903},
            "Qwen-235B": {"accuracy": 0.932},
            "DeepfakeJudge-3B": {"accuracy": 0.944},
            "DeepfakeJudge-7B": {"accuracy": 0.962},
        },
        note="accuracy in % agreement with the preferred response; one order (A, B) as published",
    ),
    PaperTable(
        "pairwise-dfj-meta-human", "Pairwise Evaluation (DFJ-Meta-Human column)", "dfj-meta-human/pairwise",
        ("accuracy",),
        {
            "Gemini-2.5": {"accuracy": 0.942},
            "GPT-4o-mini": {"accuracy": 0.898},
            "Qwen-235B": {"accuracy": 0.994},
            "DeepfakeJudge-3B": {"accuracy": 0.966},
            "DeepfakeJudge-7B": {"accuracy": 0.989},
        },
        note="accuracy in % agreement with human preferences; one order (A, B) as published",
    ),
    PaperTable(
        "dfj-detect", "Deepfake Detection (OOD) on DeepfakeJudge-Detect", "dfj-bench/dfj-detect",
        ("real_f1", "fake_f1", "accuracy"),
        {
            "Gemini-2.5-Flash": {"real_f1": 0.737, "fake_f1": 0.500, "accuracy": 0.655},
            "GPT-4o-mini": {"real_f1": 0.702, "fake_f1": 0.358, "accuracy": 0.593},
            "Qwen-3-VL-235B": {"real_f1": 0.786, "fake_f1": 0.684, "accuracy": 0.745},
            "Qwen-3-VL-235B-Thinking": {"real_f1": 0.766, "fake_f1": 0.798, "accuracy": 0.637},
            "SIDA-13B": {"real_f1": 0.570, "fake_f1": 0.345, "accuracy": 0.481},
        },
        note="2,000 images: 1,000 real, 500 text-to-image, 500 edited",
    ),
    PaperTable(
        "dfj-reason", "Reasoning Evaluation on DeepfakeJudge-Reason", "dfj-bench/dfj-reason",
        ("bleu3", "bertscore", "dfj_score"),
        {
            "Gemini-2.5-Flash": {"bleu3": 0.02, "bertscore": 0.60, "dfj_score": 3.17},
            "GPT-4o-mini": {"bleu3": 0.01, "bertscore": 0.35, "dfj_score": 2.83},
            "Qwen-3-VL-30B": {"bleu3": 0.03, "bertscore": 0.62, "dfj_score": 3.31},
            "Qwen-3-VL-235B": {"bleu3": 0.01, "bertscore": 0.60, "dfj_score": 3.59},
            "SIDA": {"bleu3": 0.01, "bertscore": 0.58, "dfj_score": 2.32},
        },
        note="DFJ score: mean 1-5 score of the 3B pointwise judge",
    ),
)}

# The released judges by the name their rows carry in the paper's tables.
RELEASED = {
    ("3B", "pointwise"): "MBZUAI/Qwen-2.5-VL-Instruct-3B-Pointwise-DFJ",
    ("3B", "pairwise"): "MBZUAI/Qwen-2.5-VL-Instruct-3B-Pairwise-DFJ",
    ("7B", "pointwise"): "MBZUAI/Qwen-2.5-VL-Instruct-7B-Pointwise-DFJ",
    ("7B", "pairwise"): "MBZUAI/Qwen-2.5-VL-Instruct-7B-Pairwise-DFJ",
}
SIZES = ("3B", "7B")


def judge_row(size: str) -> str:
    return f"DeepfakeJudge-{size}"


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def paper_name(table: str, model: str) -> str | None:
    """The paper's row name in `table` for `model`, compared ignoring case and punctuation (so
    `gpt-4o-mini` finds "GPT-4o-mini"); None when the paper has no such row."""
    return next((name for name in TABLES[table].rows if _key(name) == _key(model)), None)


def paper_row(table: str, model: str) -> dict[str, float] | None:
    """The paper's figures for `model` in `table`; None when the paper has no such row."""
    name = paper_name(table, model)
    return None if name is None else TABLES[table].rows[name]
