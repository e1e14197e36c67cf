"""Synthetic stand-in for Kaggle's LMSYS Chatbot Arena `train.csv`.

The pipeline's default data must run offline, fast, and still prove the point
of the project: a LoRA-trained tiny model should beat the label prior
(~35/35/30). So the frame copies the real file's quirks (JSON-encoded lists of
turns, `ensure_ascii` surrogate escapes, null and empty turns, multi-turn
rows) and plants a signal that lives in the tokens.

The signal: every response gets a latent *style*, and styles have a quality
order

    detailed (markdown "**Answer:**", numbered list, 40-150 words)  quality 3
    plain    (a few sentences, 15-50 words)                          quality 2
    brief    (one short sentence)                                    quality 1
    refusal  ("I'm sorry, but I can't help with that." ...)          quality 0

score = quality + gaussian noise; |score_a - score_b| < TIE_MARGIN -> tie,
otherwise the higher score wins. Two responses of the same style differ only
by noise, so they tie more often, as real human raters do. The noise keeps
the task from being trivial: a perfect reader of styles still can't reach
100%, just like on the real data.

Models have fixed style propensities, so `model_a`/`model_b` carry a weak
prior too (as in the real arena, where some models win more often).
"""

import json

import numpy as np
import pandas as pd

COLUMNS = [
    "id", "model_a", "model_b", "prompt", "response_a", "response_b",
    "winner_model_a", "winner_model_b", "winner_tie",
]

# name -> weights over STYLES; different mixes give model names a weak prior.
MODELS: dict[str, list[float]] = {
    "nova-chat-70b":    [0.45, 0.35, 0.12, 0.08],
    "quill-13b":        [0.30, 0.40, 0.20, 0.10],
    "zephyrine-7b":     [0.20, 0.40, 0.25, 0.15],
    "lantern-34b":      [0.35, 0.35, 0.15, 0.15],
    "breeze-instruct":  [0.25, 0.35, 0.25, 0.15],
    "pebble-2b":        [0.10, 0.35, 0.35, 0.20],
    "aurora-v2":        [0.40, 0.30, 0.15, 0.15],
    "vicunoid-33b":     [0.25, 0.40, 0.20, 0.15],
}
MODEL_NAMES = list(MODELS)
STYLES = ["detailed", "plain", "brief", "refusal"]
QUALITY = np.array([3.0, 2.0, 1.0, 0.0])

# Noise std per response and tie margin: tuned so ties are ~30% and a/b wins
# ~35% each (symmetric by construction), while the style gap still decides
# most non-tie rows.
NOISE_STD = 1.0
TIE_MARGIN = 0.76

MULTI_TURN_P = 0.13   # share of rows with 2-4 turns, like the real data
NULL_TURN_P = 0.01    # real responses sometimes are JSON null ...
EMPTY_TURN_P = 0.01   # ... or the empty string
EXOTIC_ROW_P = 0.10   # rows with accented Latin, CJK or emoji

TOPICS: dict[str, list[str]] = {
    "cooking": ["sourdough bread", "a risotto", "the sauce", "garlic", "a cast iron pan",
                "the marinade", "fresh pasta", "the oven temperature", "spices"],
    "coding": ["a Python function", "the unit tests", "a SQL query", "the API", "recursion",
               "a hash map", "the git history", "memory leaks", "a regex"],
    "travel": ["a train ticket", "the itinerary", "a budget hotel", "travel insurance",
               "the visa", "a day trip", "jet lag", "a carry-on bag", "local food"],
    "science": ["photosynthesis", "black holes", "the immune system", "plate tectonics",
                "quantum tunneling", "DNA replication", "climate models", "entropy"],
    "history": ["the Roman Empire", "the printing press", "the Silk Road", "the Cold War",
                "ancient Egypt", "the Industrial Revolution", "medieval castles"],
    "math": ["prime numbers", "a derivative", "the Pythagorean theorem", "matrices",
             "probability", "an integral", "modular arithmetic", "a proof by induction"],
    "health": ["sleep quality", "a running plan", "hydration", "stretching", "protein intake",
               "stress", "posture", "a healthy breakfast"],
    "finance": ["an index fund", "the monthly budget", "compound interest", "a credit score",
                "the emergency fund", "taxes", "a mortgage", "inflation"],
}
TOPIC_NAMES = list(TOPICS)
VERBS = ["improve", "understand", "fix", "plan", "learn", "compare", "choose", "explain",
         "optimize", "start with", "debug", "organize"]
ADJS = ["careful", "simple", "practical", "reliable", "gradual", "consistent", "clear",
        "flexible", "thorough", "balanced"]

# Non-ASCII snippets; the emoji become surrogate pairs under ensure_ascii=True.
EXOTIC = ["café", "crème brûlée", "jalapeño", "résumé", "naïve", "Ångström", "Zürich",
          "你好，世界", "谢谢你的帮助", "こんにちは", "数学の問題", "안녕하세요",
          "🍍", "🚀", "😊", "👍", "🎉", "🤔", "🔥"]

PROMPTS = [
    "How do I {verb} {noun}?",
    "What is the best way to {verb} {noun} in {topic}?",
    "Can you explain {noun} to a beginner?",
    "Why does {noun} matter for {noun2}?",
    "Write a short note about {noun} and {noun2}.",
    "Compare {noun} and {noun2}. Which one should I focus on?",
    "Give me some tips on {noun}.",
    "I am confused about {noun}. What should I know?",
    "What are common mistakes with {noun}?",
]
FOLLOWUPS = [
    "Can you expand on {noun}?",
    "Thanks! What about {noun2}?",
    "Make it shorter, please.",
    "Now explain it like I'm five.",
    "How does that relate to {noun2}?",
    "Give me an example with {noun}.",
]
SENTENCES = [
    "{Noun} is closely tied to {noun2}, so it helps to start there.",
    "Most people {verb} {noun} by focusing on the {adj} details first.",
    "A {adj} approach is to {verb} {noun} step by step.",
    "In {topic}, {noun} usually depends on {noun2}.",
    "If you {verb} {noun} carefully, the results tend to be {adj}.",
    "Keep in mind that {noun2} can change how {noun} behaves.",
    "It is worth checking {noun2} before you {verb} {noun}.",
    "A {adj} habit is to review {noun} regularly.",
]
BRIEF = [
    "It depends on {noun}.",
    "Try {noun2}.",
    "Yes, {noun} works.",
    "Just {verb} {noun}.",
    "{Noun} is {adj}.",
    "Not really.",
]
REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I'm sorry, I cannot assist with that request.",
    "As an AI language model, I can't provide that.",
    "I apologize, but I'm unable to help with this.",
    "Sorry, I can't help with that request.",
]
HEADINGS = ["**Answer:**", "**Overview:**", "### Answer", "**Short answer:**"]
CLOSERS = ["**Summary:**", "**Tip:**", "**In short:**"]


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _fill(rng: np.random.Generator, template: str, topic: str) -> str:
    nouns = TOPICS[topic]
    i, j = rng.choice(len(nouns), size=2, replace=False)
    noun = nouns[i]
    return template.format(
        noun=noun, Noun=noun[0].upper() + noun[1:], noun2=nouns[j], topic=topic,
        verb=_pick(rng, VERBS), adj=_pick(rng, ADJS),
    )


def _response(rng: np.random.Generator, style: int, topic: str) -> str:
    """One response turn in the given style (index into STYLES)."""
    if style == 0:  # detailed: heading + numbered list + closer, 40-150 words
        k = int(rng.integers(3, 8))
        lines = [_pick(rng, HEADINGS), "", _fill(rng, _pick(rng, SENTENCES), topic), ""]
        for n in range(1, k + 1):
            lines.append(f"{n}. " + _fill(rng, _pick(rng, SENTENCES), topic))
        lines += ["", _pick(rng, CLOSERS) + " " + _fill(rng, _pick(rng, SENTENCES), topic)]
        return "\n".join(lines)
    if style == 1:  # plain: a few sentences of prose, 15-50 words
        k = int(rng.integers(2, 5))
        return " ".join(_fill(rng, _pick(rng, SENTENCES), topic) for _ in range(k))
    if style == 2:  # brief: one short sentence
        return _fill(rng, _pick(rng, BRIEF), topic)
    return _pick(rng, REFUSALS)


def _exotic(rng: np.random.Generator, text: str) -> str:
    return text + " " + _pick(rng, EXOTIC)


def _maybe_blank(rng: np.random.Generator, text: str) -> str | None:
    # Real responses are sometimes null or "" (failed generations); they stay
    # as label noise, the winner is still decided by the latent style.
    u = rng.random()
    if u < NULL_TURN_P:
        return None
    if u < NULL_TURN_P + EMPTY_TURN_P:
        return ""
    return text


def generate_arena_sample(n_rows: int, seed: int) -> pd.DataFrame:
    """Deterministic synthetic arena frame with the columns of `train.csv`."""
    rng = np.random.default_rng(seed)
    # 7-digit unique ids in random order, so nothing can be learned from them
    ids = rng.choice(9_000_000, size=n_rows, replace=False) + 1_000_000
    rows = []
    for r in range(n_rows):
        ia, ib = rng.choice(len(MODEL_NAMES), size=2, replace=False)
        model_a, model_b = MODEL_NAMES[ia], MODEL_NAMES[ib]
        sa = int(rng.choice(4, p=MODELS[model_a]))
        sb = int(rng.choice(4, p=MODELS[model_b]))
        topic = _pick(rng, TOPIC_NAMES)
        n_turns = int(rng.integers(2, 5)) if rng.random() < MULTI_TURN_P else 1
        exotic = rng.random() < EXOTIC_ROW_P

        prompt, resp_a, resp_b = [], [], []
        for t in range(n_turns):
            p = _fill(rng, _pick(rng, PROMPTS if t == 0 else FOLLOWUPS), topic)
            a, b = _response(rng, sa, topic), _response(rng, sb, topic)
            if exotic:
                p = _exotic(rng, p) if t == 0 else p
                a = _exotic(rng, a) if rng.random() < 0.5 else a
                b = _exotic(rng, b) if rng.random() < 0.5 else b
            prompt.append(p)
            resp_a.append(_maybe_blank(rng, a))
            resp_b.append(_maybe_blank(rng, b))

        # Same style -> only noise separates them -> ties are more likely.
        diff = QUALITY[sa] - QUALITY[sb] + rng.normal(0.0, NOISE_STD * np.sqrt(2.0))
        label = 2 if abs(diff) < TIE_MARGIN else (0 if diff > 0 else 1)
        rows.append((
            int(ids[r]), model_a, model_b,
            json.dumps(prompt, ensure_ascii=True),
            json.dumps(resp_a, ensure_ascii=True),
            json.dumps(resp_b, ensure_ascii=True),
            int(label == 0), int(label == 1), int(label == 2),
        ))
    return pd.DataFrame(rows, columns=COLUMNS)
